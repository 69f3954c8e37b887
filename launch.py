"""Start OneGPU Studio: flags -> Settings -> Studio -> build_app() -> launch().

    python launch.py [--port 7860] [--home DIR] [--vram-budget 12GiB] [--profile small|full]
                     [--offline] [--share] [--auth user:pass | --auth-file FILE]
"""

from __future__ import annotations

import logging
import os
import signal
import sys


def main(argv: list[str]) -> int:
    from studio.config import build_parser, quiet_telemetry, settings_from_args

    quiet_telemetry()
    if build_parser().parse_args(argv).doctor:
        from studio import doctor

        home = settings_from_args([a for a in argv if a != "--doctor"]).home
        return doctor.main(["--home", str(home)])
    # torch's idle CPU threads sleep instead of spinning: with spinning, any other busy process
    # stalls every layer of a CPU model (RAG queries went from 40 ms to 1.5 s on 2 busy cores)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = settings_from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns on every CPU with AVX-512 BF16 that a hub kernel is missing (the
    # studio never needs it there): the user sees the doctor's findings instead.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if settings.offline:
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", YOLO_OFFLINE="1")

    from studio import doctor
    from studio.app import build_app, configure_queue, launch_kwargs
    from studio.context import build_studio
    from studio.hub import apply_saved_choices
    from studio.profiles import profile_models
    from studio.weights import ensure_small_weights

    studio = build_studio(settings)
    if studio.profile == "small":
        missing = ensure_small_weights(offline=settings.offline)
        if missing:
            print(f"Note: small-profile weights not installed: {', '.join(missing)}; "
                  "tabs that need them will say so.")
        studio.choices = apply_saved_choices(  # paths of what was just installed
            settings.home, "small", profile_models("small"))
    # The doctor's findings become the page's warning banner (and are printed below).
    studio.extras["doctor"] = doctor.problems(doctor.run_checks(settings.home))
    if settings.generated_password:
        user, password = settings.auth[0]
        why = "Sharing is on" if settings.share else f"--host {settings.host} is reachable " \
            "from other machines"
        print(f"\n  {why} and no --auth was given, so a password was generated:\n"
              f"    user: {user}\n    password: {password}\n", flush=True)

    app = build_app(studio)
    configure_queue(app)
    terminated = []

    def on_sigterm(signum, frame):  # a service manager's stop: close cleanly, keep the jobs
        terminated.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # quiet: Gradio's own lines ("set share=True in launch()") contradict the studio's
        # flags; the studio prints its own banner instead.
        if settings.share and settings.offline:
            print("\n  --offline: no public link is opened (the share service is on the "
                  "internet); serving locally only.\n", flush=True)
        app.launch(share=settings.share and not settings.offline, prevent_thread_lock=True,
                   quiet=True,
                   **launch_kwargs(studio))
        print(startup_banner(studio, app.local_url, app.share_url), flush=True)
        if settings.share and not settings.offline and not app.share_url:
            print("\n  No public link could be opened (no internet, or the share service is "
                  f"unreachable). The studio keeps serving locally at {app.local_url}\n",
                  flush=True)
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        running = [v.id for v in studio.jobs.queue() if v.status == "running"]
        studio.close(interrupt_jobs=not terminated)
        app.close()
        if terminated:
            kept = (f" {len(running)} running job(s) keep running ({', '.join(running)}); "
                    "the next start adopts them." if running else "")
            print(f"\n  Stopped (SIGTERM).{kept}\n", flush=True)
    return 0


def startup_banner(studio, local_url: str | None, share_url: str | None) -> str:
    """The one block a user reads in the terminal: where, what, how to share, what is wrong."""
    s = studio.settings
    lines = ["", f"  OneGPU Studio is running at {local_url}"]
    if share_url:
        lines.append(f"  Public link: {share_url}")
    lines.append(f"  {studio.device_summary()}")
    lines.append(f"  Home: {s.home}")
    if not s.share:
        lines.append("  To share it with others: ./studio.sh --share (a password is generated)")
    for c in studio.extras.get("doctor", []):
        lines.append(f"  {'Problem' if c.status == 'fail' else 'Warning'}: {c.name}: {c.detail}")
    if studio.extras.get("doctor"):
        lines.append("  (./studio.sh --doctor describes this machine in full)")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
