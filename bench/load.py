"""Load test on loopback: N concurrent gradio_client sessions against one launched studio.

    python bench/load.py                      # 20 clients, 150 s, writes bench/results/load.json
    python bench/load.py --clients 5 --duration 30 --out /tmp/load.json   # a quick look

The studio runs as ``python launch.py --profile small --offline`` in a child process on a fresh
home folder (real small models: SmolLM2-135M chat, all-MiniLM-L6-v2 embeddings, a YOLOv8n
dataset, a Tiny GPT run trained at set-up). Each session is its own ``gradio_client.Client``
with default settings (so its default timeouts) and loops over the light action of every tab
until the time is up:

- ``status``: ``/studio_status``;
- ``chat``: ``/chat_send`` on the small model (16 new tokens, the least the tab allows);
  and ``chat_stop``: a long reply that the session stops with ``/chat_stop`` once it streams;
- ``rag_search`` and ``rag_ask``: retrieval, and a short answer, on a small knowledge base;
- ``yolo_boxes``: save boxes on the session's own image, read them back;
- ``tinygpt``: ``/tinygpt_generate`` (20 tokens) from the run trained at set-up.

Work belongs to an owner (studio/sessions.py): a Client that sends no secret is its own owner
and would see none of the set-up's knowledge base, dataset or run. The set-up and every session
send one secret (``BENCH_SECRET``, the endpoints' last argument ``secret``): they are one
person's browser tabs, each its own Gradio session (its own Stop flags, its own queue place).

Every message, question and box carries tokens unique to the session and the call; a reply is
"cross-talk" if it holds another session's token or lacks its own (the chat history returned,
the query echoed by search, the boxes read back). Recorded: connection times and failures,
errors by action, cross-talk, p50/p95 per action, Stop outcomes, the server's memory (RSS of
the studio process and its children) before and after, and the machine's load while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = re.compile(r"zq(\d{2})k(\d{5})")  # zq<session>k<call>: letters every tokenizer has


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_tree(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
    except psutil.Error:
        return 0


def start_studio(home: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--home", str(home),
         "--profile", "small", "--offline"], cwd=str(ROOT), env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with {proc.returncode}")
        try:
            if httpx.get(url + "gradio_api/info", timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("the studio did not come up")


# ----- set-up: a knowledge base, a YOLO dataset with one image per session, a Tiny GPT run -----
NOTES = {
    "lighthouse.md": "# Lighthouse\nThe Brightwater lighthouse was built in 1887 and its lamp "
                     "is visible for 22 nautical miles. Keepers lived there until 1961.\n",
    "bakery.md": "# Bakery\nThe Corner bakery opens at six. Its sourdough uses a starter kept "
                 "since 1994, fed with rye flour every morning.\n",
    "garden.md": "# Garden\nTomatoes are planted in May after the last frost; basil grows next "
                 "to them and keeps pests away.\n",
}
KB = "loadbench"
DATASET = "loadbench"
BENCH_SECRET = "10adbe4c" * 4  # the owner of the set-up and of every session (see above)


def set_up(url: str, work: Path, clients: int) -> dict:
    from gradio_client import Client, handle_file
    from PIL import Image

    c = Client(url, verbose=False)
    notes = []
    for name, text in NOTES.items():
        (work / name).write_text(text)
        notes.append(handle_file(str(work / name)))
    c.predict(KB, secret=BENCH_SECRET, api_name="/rag_create_kb")
    c.predict(KB, notes, "", "now", secret=BENCH_SECRET, api_name="/rag_ingest")
    c.predict(DATASET, "thing, other", secret=BENCH_SECRET, api_name="/yolo_create_dataset")
    images = []
    for i in range(clients):
        p = work / f"s{i:02d}.png"
        Image.new("RGB", (96, 96), (i * 9 % 255, 80, 160)).save(p)
        images.append(handle_file(str(p)))
    c.predict(DATASET, images, False, secret=BENCH_SECRET, api_name="/yolo_add_files")
    c.predict("stdlib", None, "", 200_000, "char", 512, "learned", 1, 2, 32, 32, 0.0, 40, 8,
              3e-3, "cpu", secret=BENCH_SECRET, api_name="/tinygpt_train")
    run_id = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = [r for r in (ROOT_HOME[0] / "runs").glob("*tinygpt*")]
        done = [r for r in runs if json.loads((r / "run.json").read_text()).get("status")
                == "succeeded"] if runs else []
        if done:
            run_id = done[0].name
            break
        time.sleep(2)
    if run_id is None:
        raise RuntimeError("the Tiny GPT run did not finish at set-up")
    c.close()
    return {"tinygpt_run": run_id}


ROOT_HOME: list[Path] = []


# ----- one session -----------------------------------------------------------------------------
class Session(threading.Thread):
    def __init__(self, idx: int, url: str, deadline: float, setup: dict, results: dict,
                 lock: threading.Lock):
        super().__init__(daemon=True, name=f"session-{idx}")
        self.idx, self.url, self.deadline, self.setup = idx, url, deadline, setup
        self.results, self.lock = results, lock
        self.calls = 0
        self.rng = random.Random(idx)

    def token(self) -> str:
        self.calls += 1
        return f"zq{self.idx:02d}k{self.calls:05d}"

    def record(self, key: str, value) -> None:
        with self.lock:
            self.results[key].append(value)

    def check(self, action: str, text: str, mine: list[str]) -> None:
        """Cross-talk: a token of another session in the reply, or one of ours missing."""
        found = {m.group(0) for m in TOKEN.finditer(text)}
        foreign = [t for t in found if int(t[2:4]) != self.idx]
        missing = [t for t in mine if t not in text]
        if foreign or missing:
            self.record("crosstalk", {"session": self.idx, "action": action,
                                      "foreign": foreign, "missing": missing})

    def run(self) -> None:
        from gradio_client import Client

        t0 = time.perf_counter()
        try:
            client = Client(self.url, verbose=False)  # default settings, default timeouts
        except Exception as e:
            self.record("connect_failures", f"{type(e).__name__}: {e}"[:300])
            return
        self.record("connect_s", time.perf_counter() - t0)
        actions = [self.status, self.chat, self.rag_search, self.yolo_boxes, self.rag_ask,
                   self.tinygpt, self.chat_stop]
        self.rng.shuffle(actions)  # sessions start on different tabs
        i = 0
        while time.monotonic() < self.deadline:
            action = actions[i % len(actions)]
            i += 1
            name = action.__name__
            t = time.perf_counter()
            try:
                action(client)
                self.record(f"lat:{name}", time.perf_counter() - t)
            except Exception as e:
                self.record("errors", {"session": self.idx, "action": name,
                                       "error": f"{type(e).__name__}: {e}"[:300]})
        client.close()

    # ----- the actions --------------------------------------------------------------------
    def status(self, c) -> None:
        st = c.predict(api_name="/studio_status")
        assert "device" in st and "ledger" in st, st

    def _chat_args(self, msg: str, max_new: int) -> list:
        return [msg, [], "profile", "", "auto", "", "", "", "Answer in one short sentence.",
                False, max_new, 0, 0.9, 1.0, -1]

    def chat(self, c) -> None:
        tok = self.token()
        msg = f"Say hello to {tok}."
        chat, stats, _ = c.predict(*self._chat_args(msg, 16), api_name="/chat_send")
        assert chat[-1]["role"] == "assistant" and "tokens" in stats, stats
        self.check("chat", json.dumps(chat), [tok])

    def chat_stop(self, c) -> None:
        tok = self.token()
        job = c.submit(*self._chat_args(f"Tell {tok} a long story.", 400),
                       api_name="/chat_send")
        deadline = time.monotonic() + 600
        while len(job.outputs()) < 2 and not job.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = c.predict(api_name="/chat_stop")
        t_stop = time.perf_counter()
        chat, stats, _ = job.result()
        self.record("stop", {"answer": answer, "stopped": "stopped" in stats,
                             "after_stop_s": round(time.perf_counter() - t_stop, 3)})
        self.check("chat_stop", json.dumps(chat), [tok])

    def rag_search(self, c) -> None:
        tok = self.token()
        q = f"When was the lighthouse built? {tok}"
        _html, data = c.predict(KB, q, 3, True, False, secret=BENCH_SECRET,
                                api_name="/rag_search")
        assert data["sources"], data
        self.check("rag_search", data["query"], [tok])

    def rag_ask(self, c) -> None:
        tok = self.token()
        q = f"What flour feeds the bakery starter? {tok}"
        chat, _q, _html, data = c.predict(KB, q, [], 3, True, False, False, 24, 0,
                                          secret=BENCH_SECRET, api_name="/rag_ask")
        assert chat and chat[-1]["role"] == "assistant", chat
        self.check("rag_ask", json.dumps(chat[0]), [tok])

    def yolo_boxes(self, c) -> None:
        self.token()
        img = f"s{self.idx:02d}.png"
        x = 2 + self.idx  # this session's own box, moved every call
        y = 2 + self.calls % 40
        boxes = [{"xmin": x, "ymin": y, "xmax": x + 30, "ymax": y + 30, "label": "thing"}]
        c.predict(DATASET, img, json.dumps(boxes), secret=BENCH_SECRET,
                  api_name="/yolo_set_boxes")
        got = c.predict(DATASET, img, secret=BENCH_SECRET, api_name="/yolo_get_boxes")
        seen = [(b["xmin"], b["ymin"]) for b in got["boxes"]]
        if seen != [(x, y)]:
            self.record("crosstalk", {"session": self.idx, "action": "yolo_boxes",
                                      "expected": [(x, y)], "got": seen})

    def tinygpt(self, c) -> None:
        tok = self.token()
        text, stats = c.predict(self.setup["tinygpt_run"], f"def {tok}(", 20, 0.8, 40, "on",
                                secret=BENCH_SECRET, api_name="/tinygpt_generate")
        assert isinstance(text, str) and stats, stats
        self.check("tinygpt", text, [])  # a continuation: no one else's token may show up


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=150.0, help="seconds of load")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    ap.add_argument("--url", help="an already running studio (skips start and set-up)")
    args = ap.parse_args(argv)

    import psutil

    work = Path(tempfile.mkdtemp(prefix="studio-load-"))
    home = work / "home"
    ROOT_HOME.append(home)
    proc = None
    if args.url:
        url, pid = args.url.rstrip("/") + "/", None
        setup = {"tinygpt_run": os.environ.get("LOAD_TINYGPT_RUN", "")}
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        proc = start_studio(home, port, work / "studio.log")
        pid = proc.pid
    try:
        t_start = time.perf_counter()
        for attempt in range(3):
            if proc is None:
                break
            try:
                wait_up(url, proc)
                break
            except RuntimeError:
                # Gradio's own start-up check of localhost can time out on a busy machine
                if "localhost is not accessible" not in (work / "studio.log").read_text() \
                        or attempt == 2:
                    raise
                port = free_port()
                url = f"http://127.0.0.1:{port}/"
                proc = start_studio(home, port, work / "studio.log")
                pid = proc.pid
        if proc is not None:
            print(f"studio up in {time.perf_counter() - t_start:.0f} s; setting up", flush=True)
            setup = set_up(url, work, args.clients)
        import httpx

        sizes = {p: len(httpx.get(url + p, timeout=60).content)
                 for p in ("config", "gradio_api/info")}
        mem_before = rss_tree(pid) if pid else 0
        load_before = os.getloadavg()
        results: dict = defaultdict(list)
        lock = threading.Lock()
        deadline = time.monotonic() + args.duration
        sessions = [Session(i, url, deadline, setup, results, lock) for i in range(args.clients)]
        print(f"{args.clients} sessions for {args.duration:.0f} s", flush=True)
        t_load = time.perf_counter()
        for s in sessions:
            s.start()
        for s in sessions:
            s.join(args.duration + 900)
        wall = time.perf_counter() - t_load
        mem_after = rss_tree(pid) if pid else 0
        load_after = os.getloadavg()
        actions = {}
        for key, xs in sorted(results.items()):
            if key.startswith("lat:"):
                actions[key[4:]] = {"n": len(xs), "p50_s": round(statistics.median(xs), 3),
                                    "p95_s": round(pct(xs, 0.95), 3),
                                    "max_s": round(max(xs), 3)}
        stops = results["stop"]
        out = {
            "what": "bench/load.py: concurrent gradio_client sessions on loopback, each "
                    "checking its replies carry its own unique tokens",
            "clients": args.clients, "duration_s": args.duration, "wall_s": round(wall, 1),
            "machine": {"cpus": os.cpu_count(), "load_before": load_before,
                        "load_after": load_after,
                        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1)},
            "payload_bytes": sizes,
            "connect": {"ok": len(results["connect_s"]),
                        "failures": len(results["connect_failures"]),
                        "failure_samples": results["connect_failures"][:5],
                        "p50_s": round(statistics.median(results["connect_s"]), 2)
                        if results["connect_s"] else None,
                        "max_s": round(max(results["connect_s"]), 2)
                        if results["connect_s"] else None},
            "calls": sum(a["n"] for a in actions.values()),
            "errors": len(results["errors"]), "error_samples": results["errors"][:10],
            "crosstalk": len(results["crosstalk"]),
            "crosstalk_samples": results["crosstalk"][:10],
            "actions": actions,
            "stop": {"n": len(stops), "answered_stopping": sum(s["answer"] == "Stopping…"
                                                                for s in stops),
                     "reply_marked_stopped": sum(s["stopped"] for s in stops),
                     "p95_end_after_stop_s": round(pct([s["after_stop_s"] for s in stops],
                                                       0.95), 3) if stops else None},
            "server_rss_bytes": {"before": mem_before, "after": mem_after},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps({k: out[k] for k in ("connect", "calls", "errors", "crosstalk",
                                              "actions", "stop", "server_rss_bytes")},
                         indent=1))
        return 0 if not (out["errors"] or out["crosstalk"] or out["connect"]["failures"]) else 1
    except Exception:
        traceback.print_exc()
        if proc is not None:
            print((work / "studio.log").read_text()[-3000:])
        return 2
    finally:
        if proc is not None:
            import signal

            proc.send_signal(signal.SIGINT)  # launch.py closes the studio (jobs, models)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
