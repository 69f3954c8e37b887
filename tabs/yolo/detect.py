"""Detection with a trained model: images, video files and webcam frames; pre-labelling.

A ``.pt`` file is a pickle and can run code when loaded, so one uploaded from the browser is
refused unless the user says they trust it; ONNX files carry no code and load freely. Models
trained in this studio (their run folders) are trusted: we wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tabs.yolo.formats import Box

SAFE_SUFFIXES = {".onnx"}
PICKLE_SUFFIXES = {".pt", ".pth"}


class UnsafeModelFile(ValueError):
    """A pickle-based model file the user has not opted in to load."""


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
    """Refuse pickles unless `trusted`; refuse anything that is not a model file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not trusted:
        raise UnsafeModelFile(
            f"{path.name} is a PyTorch pickle: loading it can run any code it contains. Export it "
            "to ONNX where it came from, or tick 'I trust this .pt file' if you made it yourself.")
    if suffix not in SAFE_SUFFIXES | PICKLE_SUFFIXES | {".engine"}:
        raise ValueError(f"{path.name}: not a YOLO model file (.onnx, .pt or .engine)")
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    return path


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


def load_model(path: Path, device: str) -> Any:
    """An Ultralytics model for `path`; .pt weights move to `device`, ONNX picks its provider at
    predict time."""
    from ultralytics import YOLO

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
