"""Export a trained model (ONNX; TensorRT when present) and benchmark every format on this machine.

The table answers "which file should I ship": milliseconds per image at the trained size, FPS,
and the mAP of each exported file on the val set, measured the same way, so an export that loses
accuracy shows it.
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class BenchRow:
    """One format's numbers in the latency table."""

    format: str
    file: str
    size_mb: float
    ms_per_image: float
    fps: float
    map50: float | None
    map50_95: float | None
    runtime: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TABLE_HEADERS = ["format", "runtime", "size MB", "ms / image", "FPS", "mAP50", "mAP50-95"]


def table_rows(rows: list[BenchRow]) -> list[list[Any]]:
    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    return [[r.format, r.runtime, f"{r.size_mb:.1f}", f"{r.ms_per_image:.2f}", f"{r.fps:.1f}",
             fmt(r.map50), fmt(r.map50_95)] for r in rows]


def tensorrt_available() -> bool:
    import torch

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def onnx_runtime_label(device: str) -> str:
    import onnxruntime as ort

    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    return "ONNX Runtime GPU" if gpu and device != "cpu" else "ONNX Runtime CPU"


def export_onnx(weights: Path, imgsz: int, out_dir: Path) -> Path:
    """ONNX at a fixed size (what the benchmark measures); no simplifier, so no extra install."""
    from ultralytics import YOLO

    out_dir.mkdir(parents=True, exist_ok=True)
    produced = Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, simplify=False,
                                              dynamic=False, device="cpu", verbose=False))
    dest = out_dir / f"{Path(weights).stem}.onnx"
    if produced != dest:
        shutil.move(produced, dest)
    return dest


def export_tensorrt(weights: Path, imgsz: int, out_dir: Path, device: str) -> Path:
    from ultralytics import YOLO

    produced = Path(YOLO(str(weights)).export(format="engine", imgsz=imgsz, half=True,
                                              device=device, verbose=False))
    dest = out_dir / f"{Path(weights).stem}.engine"
    if produced != dest:
        shutil.move(produced, dest)
    return dest


def export_all(weights: Path, imgsz: int, out_dir: Path, device: str = "cpu"
               ) -> tuple[dict[str, Path], list[str]]:
    """{format: file} for PyTorch, ONNX and (when possible) TensorRT, plus notes for the user."""
    files = {"PyTorch": Path(weights), "ONNX": export_onnx(weights, imgsz, out_dir)}
    notes = []
    if tensorrt_available() and device != "cpu":
        files["TensorRT"] = export_tensorrt(weights, imgsz, out_dir, device)
    else:
        notes.append("TensorRT engine not built: TensorRT is not installed on this machine (or "
                     "there is no CUDA GPU). `pip install tensorrt` on a CUDA machine enables it.")
    return files, notes


def measure_latency(model: Any, images: list[np.ndarray], imgsz: int, device: str,
                    runs: int = 20, warmup: int = 3) -> float:
    """Median milliseconds per image of a full ``predict`` (pre + inference + NMS), batch 1."""
    times = []
    for i in range(warmup + runs):
        img = images[i % len(images)]
        t = time.perf_counter()
        model.predict(img, imgsz=imgsz, device=device, verbose=False)
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


# The one evaluation every format gets: square letterbox at the trained size, batch 1. Without
# rect=False a .pt is scored on rectangular (less padded) batches and a fixed-shape ONNX on
# square ones, and the table's mAP difference would come from the padding, not the format.
EVAL_ARGS = {"batch": 1, "rect": False, "plots": False, "verbose": False}


def evaluate(model: Any, data_yaml: Path, imgsz: int, device: str, work_dir: Path
             ) -> tuple[float, float]:
    """(mAP50, mAP50-95) on the val split, measured the same way for every format."""
    m = model.val(data=str(data_yaml), imgsz=imgsz, device=device, project=str(work_dir),
                  name="val", exist_ok=True, **EVAL_ARGS)
    return float(m.box.map50), float(m.box.map)


def val_images(data_yaml: Path, limit: int = 8) -> list[np.ndarray]:
    import yaml
    from PIL import Image

    spec = yaml.safe_load(Path(data_yaml).read_text())
    base = Path(spec.get("path") or Path(data_yaml).parent)
    folder = base / spec["val"]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in
                   (".jpg", ".jpeg", ".png", ".bmp", ".webp"))[:limit]
    if not files:
        raise ValueError(f"no val images under {folder}")
    return [np.asarray(Image.open(f).convert("RGB"))[..., ::-1].copy() for f in files]  # BGR


def benchmark(files: dict[str, Path], data_yaml: Path, imgsz: int, work_dir: Path,
              device: str = "cpu", runs: int = 20, with_map: bool = True,
              progress: Any = None) -> list[BenchRow]:
    """Latency and mAP per exported format on this machine; `progress(fraction, desc=...)`
    hears of each step."""
    from ultralytics import YOLO

    images = val_images(data_yaml)
    rows = []
    steps = max(1, len(files) * (2 if with_map else 1))
    done = 0

    def tell(desc: str) -> None:
        if progress is not None:
            progress(0.2 + 0.8 * done / steps, desc=desc)

    for fmt, path in files.items():
        tell(f"{fmt}: timing {runs} images")
        model = YOLO(str(path), task="detect")
        runtime = {"PyTorch": f"PyTorch {'CUDA' if device != 'cpu' else 'CPU'}",
                   "ONNX": onnx_runtime_label(device), "TensorRT": "TensorRT"}.get(fmt, fmt)
        ms = measure_latency(model, images, imgsz, device, runs=runs)
        done += 1
        m50 = m5095 = None
        if with_map:
            tell(f"{fmt}: mAP on the val set")
            m50, m5095 = evaluate(model, data_yaml, imgsz, device, work_dir / fmt.lower())
            done += 1
        rows.append(BenchRow(fmt, str(path), Path(path).stat().st_size / 1e6, ms, 1000 / ms,
                             m50, m5095, runtime))
    if progress is not None:
        progress(1.0, desc="done")
    return rows
