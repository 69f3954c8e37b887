"""YOLO benchmark: the studio's training job against the plain ``yolo train`` CLI, and export
latency per format, on the same synthetic data and settings, in one run.

    python bench/yolo.py                      # CPU here (small settings)
    python bench/yolo.py --device 0 --imgsz 640 --n-train 512 --epochs 5 --budget 12GiB

Training throughput is images per second of training time as Ultralytics itself records it in
``results.csv`` (the ``time`` column, validation included), for both paths; wall time of the
whole process (start-up included) is reported beside it. Each path runs ``--repeats`` times,
interleaved with the order alternating (so neither side always runs first), and the headline
ratio is of the medians; the ratio of the best runs and the ratio after the first epoch (which
carries cuDNN autotuning and loader start-up, the noisiest part) are reported beside it.
Writes its result under the key "cpu" or "gpu" of ``bench/results/yolo.json`` (or ``--out``),
keeping the other machine's entry.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def epoch_times(results_csv: Path) -> list[float]:
    """Ultralytics' cumulative training time (seconds) at the end of each epoch."""
    with open(results_csv) as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    return [round(float(row["time"]), 3) for row in rows]


def train_seconds(results_csv: Path) -> float:
    return epoch_times(results_csv)[-1]


def run_cli(data: Path, args: dict, project: Path, name: str) -> tuple[float, Path]:
    """The plain baseline: the `yolo` console script (same entry point), in its own process."""
    cmd = [sys.executable, "-c", "import sys; from ultralytics.cfg import entrypoint; "
           "sys.argv[0] = 'yolo'; entrypoint()", "train", f"data={data}",
           f"project={project}", f"name={name}", "exist_ok=True"]
    cmd += [f"{k}={v}" for k, v in args.items()]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    return wall, project / name / "results.csv"


def run_studio(svc, dataset: str, cfg_kwargs: dict) -> tuple[float, Path, str]:
    from tabs.yolo.config import TrainConfig

    cfg = TrainConfig(**cfg_kwargs)
    t = time.perf_counter()
    run_id = svc.start_training(dataset, cfg)
    v = svc.studio.jobs.wait(run_id, timeout=3600)
    wall = time.perf_counter() - t
    if v.status != "succeeded":
        raise RuntimeError(f"studio job {v.status}: {v.error}\n{v.log_tail}")
    return wall, Path(v.run_dir) / "train" / "results.csv", run_id


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index")
    p.add_argument("--imgsz", type=int, default=96)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget", default="", help="emulate a card of this size, e.g. 12GiB")
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "yolo.json"))
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="yolo-bench-"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "ultracfg"))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"

    from studio.config import Settings, parse_size
    from studio.context import build_studio
    from tabs.yolo.service import get_service
    from tabs.yolo.synthetic import write_yolo_dataset
    from tabs.yolo.train import offline_fonts

    offline_fonts()
    budget = parse_size(a.budget) if a.budget else 0
    data = write_yolo_dataset(work / "data", n_train=a.n_train, n_val=a.n_val, size=a.imgsz,
                              n_classes=2, seed=0)
    studio = build_studio(Settings(home=work / "home", profile="small", offline=True,
                                   vram_budget=budget or None))
    svc = get_service(studio)
    ds = svc.store.create("bench")
    ds.import_yolo(data)
    snap, _ = svc.snapshot(ds)  # the studio trains on its frozen copy; the CLI gets the same
    common = {"epochs": a.epochs, "imgsz": a.imgsz, "batch": a.batch, "workers": a.workers,
              "seed": 0, "close_mosaic": 0, "plots": False}
    amp = a.device != "cpu"
    cli_args = {**common, "model": "yolov8n.yaml", "device": a.device, "amp": amp,
                "val": True, "verbose": False}
    studio_args = {**common, "model": "yolov8n.yaml", "device": a.device, "amp": amp,
                   "offline": True, "vram_budget": budget}
    if studio.device != "cuda":
        studio_args["device"] = "cpu"

    runs = {"cli": [], "studio": []}
    last_run = None
    for i in range(a.repeats):
        order = ("cli", "studio") if i % 2 == 0 else ("studio", "cli")  # no side always first
        for path in order:
            if path == "cli":
                wall, csv_path = run_cli(snap, cli_args, work / "cli", f"r{i}")
            else:
                wall, csv_path, last_run = run_studio(svc, "bench", studio_args)
            ends = epoch_times(csv_path)
            runs[path].append({"train_s": ends[-1], "wall_s": wall, "epoch_end_s": ends,
                               "steady_s": ends[-1] - ends[0]})
        print(f"repeat {i}: cli {runs['cli'][-1]}, studio {runs['studio'][-1]}", flush=True)

    images = a.n_train * a.epochs
    med = {k: statistics.median(r["train_s"] for r in v) for k, v in runs.items()}
    ips = {k: images / s for k, s in med.items()}
    best = {k: images / min(r["train_s"] for r in v) for k, v in runs.items()}
    steady = {}
    if a.epochs > 1:  # after the first epoch (cuDNN autotuning, loader start-up, caches)
        steady = {k: a.n_train * (a.epochs - 1) / statistics.median(r["steady_s"] for r in v)
                  for k, v in runs.items()}
    rows, notes = svc.export_and_benchmark(last_run, runs=a.latency_runs)
    device_name = "cpu"
    if studio.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name(0)
    result = {
        "bench": "yolo",
        "device": device_name,
        "studio_device": studio.device_summary(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "settings": {**common, "n_train": a.n_train, "n_val": a.n_val, "amp": amp,
                     "model": "yolov8n.yaml", "budget": a.budget or None,
                     "repeats": a.repeats},
        "train": {
            "statistic": "median over repeats of images / Ultralytics' training time",
            "cli_images_per_s": ips["cli"], "studio_images_per_s": ips["studio"],
            "ratio_studio_over_cli": ips["studio"] / ips["cli"], "target_ratio": 0.95,
            "ratio_best_of_repeats": best["studio"] / best["cli"],
            "ratio_after_first_epoch": steady["studio"] / steady["cli"] if steady else None,
            "runs": runs,
        },
        "export": {"rows": [r.as_dict() for r in rows], "notes": notes},
        "versions": _versions(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    studio.close()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged["gpu" if studio.device == "cuda" else "cpu"] = result  # one file, both machines
    out.write_text(json.dumps(merged, indent=1))
    print(json.dumps({k: result[k] for k in ("device", "train")}, indent=1))
    for r in rows:
        print(f"{r.format:9s} {r.runtime:20s} {r.ms_per_image:8.2f} ms  {r.fps:8.1f} FPS  "
              f"mAP50 {r.map50:.3f}")
    print(f"wrote {out}")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "ultralytics", "onnxruntime", "onnx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
