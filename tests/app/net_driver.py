"""Run the studio (with --share) and its main actions while recording every connect and DNS
attempt.

    python -m tests.app.net_driver OUT_DIR [--offline]

Meant to run inside a fresh network namespace with only loopback up (the test starts it with
``ip netns exec``), so nothing can leave the machine whatever the code tries. Attempts are
recorded twice: by strace (``connect``/``sendto``/``sendmsg`` of every process in the tree, any
language) when strace exists, and by a Python audit hook (host names asked for). Writes
OUT_DIR/report.json: each non-loopback attempt, the host names looked up, and each action's
outcome.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_INET = re.compile(r'sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), '
                   r'(?:sin_addr=inet_addr\("([^"]+)"\)|sin6_flowinfo=[^,]*, '
                   r'inet_pton\(AF_INET6, "([^"]+)"\))')


def loopback(ip: str) -> bool:
    import ipaddress

    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.is_loopback or a.is_unspecified or (a.version == 6 and a.ipv4_mapped is not None
                                                 and a.ipv4_mapped.is_loopback)


def _stop_tree(proc: subprocess.Popen, home: Path) -> None:
    """Stop the studio, strace and any job the studio started (jobs have groups of their own,
    so they are found by the home folder in their command line)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever did not stop in time
    except ProcessLookupError:
        pass
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", str(home)], capture_output=True)


def parse_strace(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        m = _INET.search(line)
        if not m:
            continue
        ip = m.group(2) or m.group(3)
        if not loopback(ip):
            call = line.split("(", 1)[0].split()[-1]
            out.append({"call": call, "ip": ip, "port": int(m.group(1)),
                        "result": line.rsplit("=", 1)[-1].strip()})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def actions(url: str, home: Path, out: Path, auth: tuple[str, str] | None = None
            ) -> dict[str, str]:
    """The studio's main actions, each by its api_name (with --share: a generated password);
    the outcome of each."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    res: dict[str, str] = {}
    c = Client(url, verbose=False, auth=auth)
    info = c.view_api(return_format="dict", print_info=False)["named_endpoints"]

    def call(api: str, *given, **named):
        """The first arguments given, the rest at the widgets' defaults (as a click would)."""
        params = info[api]["parameters"]
        args = list(given) + [p.get("parameter_default") for p in params[len(given):]]
        for k, v in named.items():
            args[[p["parameter_name"] for p in params].index(k)] = v
        return c.predict(*args, api_name=api)

    def do(name, fn):
        t0 = time.monotonic()
        try:
            fn()
            res[name] = f"ok ({time.monotonic() - t0:.1f} s)"
        except Exception as e:  # recorded, the run goes on
            res[name] = f"error: {type(e).__name__}: {str(e)[:200]}"

    do("studio_status", lambda: c.predict(api_name="/studio_status"))
    notes = out / "notes"
    notes.mkdir(exist_ok=True)
    (notes / "wifi.md").write_text("# Wifi\n\nThe guest wifi password is tangerine-42.\n")
    do("rag_create_kb", lambda: c.predict("notes", api_name="/rag_create_kb"))
    do("rag_ingest", lambda: c.predict("notes", [handle_file(str(notes / "wifi.md"))], "", "now",
                                       api_name="/rag_ingest"))
    do("rag_search", lambda: c.predict("notes", "guest wifi password", 3, True, False,
                                       api_name="/rag_search"))
    do("chat_send", lambda: call("/chat_send", "Say hello in three words.", []))
    wav = out / "hello.wav"
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(wav), "Please send the report to the team."],
                       check=True)
    else:  # a tone: enough to run the VAD (onnxruntime) and the model
        import wave

        t = np.arange(16000 * 2) / 16000
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes(pcm.tobytes())
    from studio.profiles import profile_models

    whisper = profile_models("small")["whisper"].source
    do("whisper_transcribe", lambda: call("/whisper_transcribe", handle_file(str(wav)), None,
                                          whisper))
    rng = np.random.default_rng(0)
    imgs = []
    for i in range(4):
        p = out / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
        imgs.append(p)

    def yolo():
        c.predict("parts", "bolt", api_name="/yolo_create_dataset")
        c.predict("parts", [handle_file(str(p)) for p in imgs], False,
                  api_name="/yolo_add_files")
        for p in imgs:
            c.predict("parts", p.name, json.dumps([{"label": "bolt", "xmin": 8, "ymin": 8,
                                                    "xmax": 40, "ymax": 40}]),
                      api_name="/yolo_set_boxes")
        c.predict("parts", 0.5, api_name="/yolo_split")
        picked = c.predict("parts", "yolov8n.yaml", 1, 64, 2, 5, 0, False, 0.0, 0.0, False,
                           False, api_name="/yolo_train")
        run_id = picked["value"] if isinstance(picked, dict) else picked
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            run = json.loads((home / "runs" / str(run_id) / "run.json").read_text())
            if run["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
                assert run["status"] == "succeeded", run
                return
            time.sleep(1)
        raise TimeoutError("yolo job still running")

    do("yolo_train_job", yolo)
    return res


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    offline = "--offline" in argv
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    audit = out / "audit.jsonl"
    trace = out / "strace.txt"
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_",
                                "GRADIO_ANALYTICS", "ANONYMIZED", "HF_HUB_DISABLE",
                                "PYANNOTE_METRICS", "ORT_", "DO_NOT_TRACK"))}
    env.update(PYTHONUNBUFFERED="1", STUDIO_NET_AUDIT=str(audit),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "app" / "netaudit"), str(ROOT)]))
    cmd = [sys.executable, "launch.py", "--port", str(port), "--home", str(home),
           "--profile", "small", "--share"] + (["--offline"] if offline else [])
    method = "audit hook"
    if shutil.which("strace"):
        cmd = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
               *cmd]
        method = "strace + audit hook"
    log = open(out / "studio.log", "w")
    # its own process group: SIGTERM to strace alone would detach it and leave the studio running
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    results: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if "is running at" in (out / "studio.log").read_text(errors="replace"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the studio did not start: "
                               + (out / "studio.log").read_text()[-2000:])
        text = (out / "studio.log").read_text(errors="replace")
        password = re.search(r"password: (\S+)", text)
        results = actions(f"http://127.0.0.1:{port}/", home, out,
                          ("studio", password.group(1)) if password else None)
    finally:
        _stop_tree(proc, home)
        log.close()
    lookups = set()
    audited = []
    if audit.exists():
        for line in audit.read_text().splitlines():
            ev = json.loads(line)
            if ev["event"] == "socket.getaddrinfo":
                host = ev["what"][0]
                if host not in ("None", "localhost", "127.0.0.1", "::1", "0.0.0.0", ""):
                    lookups.add(host)
            elif ev["event"] in ("socket.connect", "socket.sendto") and ev["what"] and \
                    not loopback(ev["what"][0]) and not ev["what"][0].startswith("/"):
                audited.append(ev)
    attempts = parse_strace(trace)
    report = {"offline": offline, "method": method, "netns": os.environ.get("STUDIO_NETNS", ""),
              "actions": results, "non_loopback_attempts": attempts,
              "audited_connects": audited, "names_looked_up": sorted(lookups),
              "contacted": sorted({f"{a['ip']}:{a['port']}" for a in attempts}
                                  | {f"{e['what'][0]}:{e['what'][1] if len(e['what']) > 1 else ''}"
                                     for e in audited})}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
