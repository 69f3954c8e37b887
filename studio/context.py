"""Studio: the one object every tab gets — settings, the model manager, the job manager."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio.config import Settings, format_bytes
from studio.devices import MemoryProbe, default_budget, detect_probe
from studio.hub import apply_saved_choices
from studio.jobs import JobManager
from studio.models import ModelManager
from studio.profiles import ModelChoice, profile_models
from studio.sessions import StopFlags

log = logging.getLogger("studio")


@dataclass
class Studio:
    settings: Settings
    probe: MemoryProbe
    models: ModelManager
    jobs: JobManager
    profile: str
    choices: dict[str, ModelChoice]
    extras: dict[str, Any] = field(default_factory=dict)  # per-tab services (engines, stores)
    # Stop flags of every streaming tab, keyed by Gradio session (studio/sessions.py)
    stops: StopFlags = field(default_factory=StopFlags)
    _extras_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def service(self, name: str, factory: Callable[[Studio], Any]) -> Any:
        """The one instance of a tab's service, made on first use (handlers run in a thread
        pool, so two first requests must not build two services)."""
        with self._extras_lock:
            if name not in self.extras:
                self.extras[name] = factory(self)
            return self.extras[name]

    @property
    def device(self) -> str:
        return self.probe.device

    def device_summary(self) -> str:
        total = format_bytes(self.probe.total())
        if self.probe.device == "cuda":
            return (f"{self.probe.name} ({total}) · VRAM budget {format_bytes(self.models.budget)}"
                    f" · profile {self.profile}")
        return (f"CPU only ({total} RAM) · model budget {format_bytes(self.models.budget)} · "
                f"profile {self.profile}")

    def close(self, interrupt_jobs: bool = True) -> None:
        """Stop the scheduler and free the models. With `interrupt_jobs`, running jobs are
        asked to save and stop (marked interrupted, resumable); without, they keep running
        and the next start adopts them."""
        self.jobs.shutdown(interrupt=interrupt_jobs)
        for key in [r.key for r in self.models.loaded() if not r.key.startswith("job:")]:
            self.models.evict(key)


def build_studio(settings: Settings, probe: MemoryProbe | None = None,
                 start_jobs: bool = True) -> Studio:
    """Probe the device, size the budget, and build the managers. Called once by launch."""
    settings.make_dirs()
    probe = probe or detect_probe()
    budget = settings.vram_budget or default_budget(probe)
    if probe.device == "cuda" and budget > probe.total():
        log.warning("VRAM budget %s is more than the card has (%s); using the card's total",
                    format_bytes(budget), format_bytes(probe.total()))
        budget = probe.total()
    profile = settings.profile or ("full" if probe.device == "cuda" else "small")
    warm = 0
    if probe.device == "cuda":
        import psutil

        # Evicted GPU models may park in up to a third of the RAM, so switching back is a copy.
        warm = psutil.virtual_memory().total // 3
    models = ModelManager(budget=budget, probe=probe, warm_bytes=warm)
    jobs = JobManager(settings.runs_dir, models=models, start_thread=start_jobs)
    return Studio(settings=settings, probe=probe, models=models, jobs=jobs, profile=profile,
                  choices=apply_saved_choices(settings.home, profile,
                                              profile_models(profile)))
