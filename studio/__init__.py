"""OneGPU Studio core: settings, model manager, jobs, app shell (no tab-specific code)."""
