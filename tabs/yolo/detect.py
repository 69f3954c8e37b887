"""Detection with a trained model: images, video files and webcam frames; pre-labelling.

A ``.pt`` file is a pickle and can run code when loaded. Every Ultralytics load in the studio
runs restricted (``torch.load(weights_only=True)`` with Ultralytics' allow-list of model classes,
and model YAMLs built without ``eval``), so a real checkpoint loads and a booby-trapped one is
refused before it runs; only a file the user explicitly trusts is loaded unrestricted. ONNX files
carry no code and load freely.
"""

from __future__ import annotations

import pickle
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from studio.safety import MAX_PATH_CHARS, UnsafeModelFile, is_pickle_file, read_yaml_file
from tabs.yolo.formats import Box

SAFE_SUFFIXES = {".onnx"}
PICKLE_SUFFIXES = {".pt", ".pth"}
YAML_SUFFIXES = {".yaml", ".yml"}
__all__ = ["UnsafeModelFile"]

_LOAD_LOCK = threading.RLock()


@contextmanager
def ultralytics_loading(trusted: bool = False):
    """Ultralytics loads inside this block are restricted unless `trusted` (its process-wide
    flag is flipped under a lock, so a trusted load never unlocks another thread's)."""
    import ultralytics.nn.tasks as tasks

    with _LOAD_LOCK:
        old = tasks.SAFE_LOAD
        tasks.SAFE_LOAD = not trusted
        try:
            yield
        finally:
            tasks.SAFE_LOAD = old


def restricted_loadable(path: Path) -> bool:
    """Whether Ultralytics' restricted loader accepts the checkpoint (nothing in it runs)."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        torch_safe_load(str(path), safe_only=True)
        return True
    except (TypeError, pickle.UnpicklingError, ModuleNotFoundError, RuntimeError, EOFError,
            AttributeError, ValueError):
        return False


@dataclass
class Detection:
    label: str
    cls: int
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float

    def row(self) -> list[Any]:
        return [self.label, round(self.confidence, 3), round(self.x1, 1), round(self.y1, 1),
                round(self.x2, 1), round(self.y2, 1)]


ROW_HEADERS = ["class", "confidence", "x1", "y1", "x2", "y2"]


def check_model_file(path: Path, trusted: bool) -> Path:
    """A YOLO model file that is safe to hand to Ultralytics: .onnx/.engine, a model YAML
    (size and alias limits), or a .pt the restricted loader accepts; any other pickle only when
    `trusted`."""
    if len(str(path)) > MAX_PATH_CHARS:
        raise ValueError(f"Model: {len(str(path))} characters is not a model path")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAFE_SUFFIXES | PICKLE_SUFFIXES | YAML_SUFFIXES | {".engine"}:
        raise ValueError(f"{path.name}: not a YOLO model file (.onnx, .pt, .engine or .yaml)")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if suffix in YAML_SUFFIXES:
        read_yaml_file(path, label=f"Model {path.name}")
    elif (suffix in PICKLE_SUFFIXES or is_pickle_file(path)) and not trusted \
            and not restricted_loadable(path):
        raise UnsafeModelFile(
            f"{path.name} is a PyTorch pickle with more than a plain YOLO checkpoint in it: "
            "loading it can run any code it contains. Export it to ONNX where it came from, or "
            "tick 'I trust this file' if you made it yourself.")
    return path


def check_train_model(value: str, trusted: bool) -> str:
    """The Train tab's Model field: a bundled name (built from Ultralytics' YAML, or its
    official COCO weights), or a local file checked by `check_model_file`."""
    from tabs.yolo.config import MODEL_CHOICES

    text = (value or "").strip()
    if text in MODEL_CHOICES:
        return text
    if len(text) > MAX_PATH_CHARS:
        raise ValueError(f"Model: {len(text)} characters is not a model name or path")
    if not text or not Path(text).exists():
        raise ValueError(f"Model: {text[:200]!r} is neither one of {', '.join(MODEL_CHOICES)} "
                         "nor an existing .pt/.yaml file")
    return str(check_model_file(Path(text), trusted))


def trained_models(runs: list[Any]) -> list[tuple[str, str]]:
    """(label, path) of every trained YOLO model and its exports in the run folders."""
    out = []
    for v in runs:
        for a in v.artifacts:
            if a["kind"] == "model" and Path(a["path"]).exists():
                out.append((f"{v.title} · {Path(a['path']).name}", a["path"]))
        export_dir = Path(v.run_dir) / "export"
        if export_dir.exists():
            for f in sorted(export_dir.glob("*.onnx")):
                out.append((f"{v.title} · {f.name}", str(f)))
    return out


def load_model(path: Path, device: str, trusted: bool = False) -> Any:
    """An Ultralytics model for `path`; .pt weights move to `device`, ONNX picks its provider at
    predict time. Restricted loading unless `trusted`."""
    from ultralytics import YOLO

    with ultralytics_loading(trusted):
        model = YOLO(str(path), task="detect")
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        model.to("cuda:0" if device == "cuda" else "cpu")
    return model


def to_detections(result: Any) -> list[Detection]:
    names = result.names
    out = []
    boxes = result.boxes
    for xyxy, conf, cls in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(),
                               strict=True):
        c = int(cls)
        out.append(Detection(str(names.get(c, c)), c, float(conf), *map(float, xyxy)))
    return out


def detect_image(model: Any, image: np.ndarray, conf: float = 0.25, iou: float = 0.7,
                 imgsz: int | None = None, device: str = "cpu"
                 ) -> tuple[np.ndarray, list[Detection]]:
    """Boxes on one RGB image; returns (annotated RGB image, detections)."""
    if image is None:
        raise ValueError("no image")
    bgr = np.ascontiguousarray(np.asarray(image)[..., :3][..., ::-1])
    kw: dict[str, Any] = {"conf": conf, "iou": iou, "verbose": False,
                          "device": "0" if device == "cuda" else "cpu"}
    if imgsz:
        kw["imgsz"] = imgsz
    result = model.predict(bgr, **kw)[0]
    return result.plot()[..., ::-1].copy(), to_detections(result)


def detect_video(model: Any, src: Path, out: Path, conf: float = 0.25, iou: float = 0.7,
                 imgsz: int | None = None, device: str = "cpu", max_frames: int | None = None,
                 progress: Any = None) -> tuple[Path, int]:
    """Annotate every frame of a video file; returns (mp4 path, frames written)."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise ValueError(f"{Path(src).name}: cannot read this video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            annotated, _ = detect_image(model, frame[..., ::-1], conf, iou, imgsz, device)
            if writer is None:
                h, w = annotated.shape[:2]
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(annotated[..., ::-1].copy())
            n += 1
            if progress is not None and total:
                progress(n / total, desc=f"frame {n}/{total}")
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if n == 0:
        raise ValueError(f"{Path(src).name}: no frames could be read")
    return Path(out), n


def prelabel(model: Any, image: np.ndarray, class_names: list[str], conf: float = 0.25,
             iou: float = 0.7, imgsz: int | None = None, device: str = "cpu") -> list[Box]:
    """Model suggestions as dataset boxes. Classes match by name; a model whose names are not
    in the dataset (e.g. trained elsewhere) maps by index when the index exists."""
    _, dets = detect_image(model, image, conf, iou, imgsz, device)
    boxes = []
    for d in dets:
        if d.label in class_names:
            cls = class_names.index(d.label)
        elif 0 <= d.cls < len(class_names):
            cls = d.cls
        else:
            continue
        boxes.append(Box(cls, d.x1, d.y1, d.x2, d.y2))
    return boxes
