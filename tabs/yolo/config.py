"""TrainConfig: one typed config for a YOLO training job; the UI reads labels from the metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.jobconfig import JobConfig
from studio.jobconfig import setting as _f

# Families Ultralytics builds from a YAML (scratch) or downloads as COCO weights (.pt).
MODEL_CHOICES = ["yolov8n.yaml", "yolov8s.yaml", "yolo11n.yaml", "yolo11s.yaml",
                 "yolov8n.pt", "yolov8s.pt", "yolo11n.pt", "yolo11s.pt"]

# Rough peak training memory per image at 640 px (measured orders of magnitude, fp16 AMP), plus
# a fixed part for CUDA context and weights. Only the reservation hint for the job queue; the
# auto-batch inside the job measures for real.
_PER_IMAGE_640 = {"n": 160 << 20, "s": 280 << 20, "m": 520 << 20, "l": 800 << 20, "x": 1200 << 20}
_FIXED = 900 << 20




@dataclass
class TrainConfig(JobConfig):
    """Everything one training run needs; saved as the run's config.json."""

    NAME = "training"

    data: str = _f("", "data.yaml", "frozen copy of the dataset in the Ultralytics layout")
    model: str = _f("yolov8n.yaml", "Model",
                    "a YAML trains from scratch; a .pt name downloads COCO weights (online); a "
                    "local .pt path fine-tunes your own checkpoint", max_chars=1024)
    epochs: int = _f(50, "Epochs", minimum=1, maximum=1000)
    imgsz: int = _f(640, "Image size", "training and export resolution (multiple of 32)",
                    minimum=32, maximum=1920)
    batch: int = _f(0, "Batch", "0 = auto: the largest batch that fits the VRAM budget",
                    minimum=0, maximum=1024)
    patience: int = _f(20, "Patience", "stop early after this many epochs without improvement",
                       minimum=0, maximum=1000)
    amp: bool = _f(True, "Mixed precision (AMP)", "GPU only; ignored on CPU")
    mosaic: float = _f(1.0, "Mosaic", "probability of 4-image mosaic augmentation", minimum=0,
                       maximum=1)
    fliplr: float = _f(0.5, "Horizontal flip", minimum=0, maximum=1)
    hsv: bool = _f(True, "Colour jitter (HSV)")
    close_mosaic: int = _f(10, "Close mosaic", "last epochs trained without mosaic", minimum=0,
                           maximum=1000)
    seed: int = _f(0, "Seed", minimum=0, maximum=2**32 - 1)
    device: str = _f("auto", "Device", "auto, cpu or a CUDA index")
    workers: int = _f(2, "Data loader workers", minimum=0, maximum=32)
    vram_budget: int = _f(0, "VRAM budget (bytes)", "cap for this job on the GPU; 0 = no cap",
                          minimum=0)
    plots: bool = _f(True, "Plots", "PR curve, confusion matrix, sample predictions")
    val_every_epoch: bool = _f(True, "Validate every epoch", "needed for live mAP")
    offline: bool = _f(False, "Offline", "never download weights, fonts or AMP check models")
    trusted_model: str = _f("", "Trusted model file", "sha256 of the .pt file you ticked 'I trust "
                            "this file' for; filled in by the studio")



    def validate(self) -> None:
        if not self.data:
            raise ValueError("no dataset: pick a dataset with labelled train and val images")
        if self.imgsz % 32:
            raise ValueError("image size must be a multiple of 32 (e.g. 320, 640)")
        if self.batch < 0:
            raise ValueError("batch must be 0 (auto) or a positive number")

    def scale(self) -> str:
        """The model size letter (n/s/m/l/x) from names like yolov8s.yaml or yolo11n.pt."""
        stem = self.model.rsplit("/", 1)[-1].split(".")[0]
        return stem[-1] if stem and stem[-1] in _PER_IMAGE_640 else "n"

    def vram_estimate(self) -> int:
        """Bytes to reserve for this job on the GPU (0 on CPU)."""
        if self.device == "cpu":
            return 0
        batch = self.batch or 16
        return int(_FIXED + batch * _PER_IMAGE_640[self.scale()] * (self.imgsz / 640) ** 2)

    def ultralytics_args(self) -> dict[str, Any]:
        """Keyword arguments for ``YOLO.train`` (data, project and name are added by the job)."""
        args: dict[str, Any] = {
            "epochs": self.epochs, "imgsz": self.imgsz, "patience": self.patience,
            "amp": self.amp, "mosaic": self.mosaic, "fliplr": self.fliplr,
            "close_mosaic": min(self.close_mosaic, self.epochs), "seed": self.seed,
            "workers": self.workers, "plots": self.plots, "val": self.val_every_epoch,
        }
        if not self.hsv:
            args.update(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
        if self.batch:
            args["batch"] = self.batch
        return args
