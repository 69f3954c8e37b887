"""The YOLO training job: ``run(config, report)``, run by ``python -m studio.worker RUN_DIR``.

Ultralytics trains in this process (it changes CUDA settings, so never in the studio's own).
Its callbacks feed the Reporter: per-epoch box/cls/dfl losses and mAP50, mAP50-95 for the live
plot, throttled progress, a resumable checkpoint after every epoch, and the plots as artifacts.
Cancel sets ``trainer.stop``, Ultralytics' own stop hook; it finishes the batch, validates and
saves ``last.pt``, and a later Resume continues from the copy kept in ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tabs.yolo.config import TrainConfig

PLOT_FILES = {  # file in the Ultralytics save dir -> label in the UI
    "BoxPR_curve.png": "PR curve",
    "PR_curve.png": "PR curve",
    "val_batch0_pred.jpg": "Sample predictions (val)",
    "val_batch0_labels.jpg": "Sample labels (val)",
    "results.png": "Training curves",
}


# Ultralytics' own confusion matrix counts every detection down to the mAP threshold (0.001),
# which fills the background cells with thousands; ours is a separate pass at the confidence
# a user detects with.
CONFUSION_CONF = 0.25
CONFUSION_FILES = {"confusion_matrix_normalized.png": "Confusion matrix (normalised)",
                   "confusion_matrix.png": "Confusion matrix"}


def confusion_matrix(weights: Path, data: str, imgsz: int, device: str, out_dir: Path,
                     conf: float = CONFUSION_CONF) -> dict[str, Any]:
    """Validate `weights` at `conf` with plots into `out_dir`; write and return
    ``{"conf", "names", "matrix"}`` (rows: predicted class + background, columns: true class +
    background, as Ultralytics lays it out) to ``out_dir/confusion.json``."""
    from ultralytics import YOLO

    out_dir = Path(out_dir)
    m = YOLO(str(weights)).val(data=data, imgsz=imgsz, conf=conf, batch=1, rect=False,
                               device=device, plots=True, verbose=False,
                               project=str(out_dir.parent), name=out_dir.name, exist_ok=True)
    cm = m.confusion_matrix
    names = getattr(cm, "names", None) or {}
    summary = {"conf": conf,
               "names": list(names.values()) if isinstance(names, dict) else list(names),
               "matrix": [[float(x) for x in row] for row in cm.matrix.tolist()]}
    (out_dir / "confusion.json").write_text(json.dumps(summary, indent=1))
    return summary


def configure_ultralytics(cache_dir: Path, offline: bool) -> None:
    """Environment Ultralytics reads once, at import: its settings/font folder, no pip installs,
    and no network when offline. Must run before the first ``import ultralytics``."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir / "ultralytics"))
    os.environ["YOLO_AUTOINSTALL"] = "false"  # a job never pip-installs behind the user's back
    # Restricted loading everywhere: weights_only=True checkpoints, model YAMLs without eval.
    # Only a file the user trusts is loaded unrestricted (tabs.yolo.detect.ultralytics_loading).
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    if "ultralytics.nn.tasks" in sys.modules:
        sys.modules["ultralytics.nn.tasks"].SAFE_LOAD = True
    if offline:
        os.environ["YOLO_OFFLINE"] = "1"
    # Online or not: no usage analytics ("sync") and no font fetched from GitHub.
    offline_fonts()
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync"):
        SETTINGS.update(sync=False)


def offline_fonts() -> None:
    """Ultralytics fetches Arial from GitHub whenever it checks a dataset, offline or not (it
    only skips the download when the file is already in its config folder). Offline, we put
    matplotlib's bundled DejaVu Sans there under those names, so label plots still have a font
    and nothing reaches for the network."""
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        dest = Path(USER_CONFIG_DIR) / name
        if not dest.exists() and src.exists():
            shutil.copyfile(src, dest)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    return requested


def auto_batch(cfg: TrainConfig, device: str) -> int | float:
    """The batch argument for Ultralytics. On CUDA, its AutoBatch takes a fraction of the memory
    the driver reports free; we turn the job's VRAM budget into that fraction, so the batch it
    picks fits the budget and not the whole card. On CPU, a fixed 16."""
    if cfg.batch:
        return cfg.batch
    if device == "cpu":
        return 16
    import torch

    free, total = torch.cuda.mem_get_info()
    budget = cfg.vram_budget or total
    return round(max(0.1, min(0.9, 0.8 * budget / max(free, 1))), 3)


class ReportCallbacks:
    """Ultralytics callbacks that turn trainer state into Reporter events."""

    def __init__(self, report: Any, every_seconds: float = 1.0):
        self.report = report
        self.every = every_seconds
        self._last_progress = 0.0
        self._batch = 0
        self._trained_epoch = False
        self._t_epoch = time.monotonic()
        self.images_seen = 0
        self.train_seconds = 0.0
        self.final: dict[str, float] = {}
        self.ckpt_dir = Path(report.run_dir) / "checkpoints"
        self._copy: threading.Thread | None = None

    def register(self, model: Any) -> None:
        for event in ("on_train_start", "on_train_epoch_start", "on_train_batch_end",
                      "on_train_epoch_end", "on_fit_epoch_end", "on_model_save"):
            model.add_callback(event, getattr(self, event))

    def on_train_start(self, trainer: Any) -> None:
        self.report.log(f"training {trainer.args.model} on {trainer.args.data} for "
                        f"{trainer.epochs} epochs at {trainer.args.imgsz} px, batch "
                        f"{trainer.batch_size}, device {trainer.device}")
        self.report.progress(trainer.start_epoch, trainer.epochs, "starting")

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._batch = 0
        self._t_epoch = time.monotonic()

    def on_train_batch_end(self, trainer: Any) -> None:
        self._batch += 1
        self.images_seen += int(trainer.batch_size)
        if self.report.should_stop() and not trainer.stop:
            trainer.stop = True  # Ultralytics checks this after every batch
            # it then validates, saves and plots: the grace period counts from here, and is
            # long enough for that on a CPU
            self.report.stopping(grace_s=180)
        now = time.monotonic()
        if now - self._last_progress >= self.every:
            self._last_progress = now
            nb = max(1, len(trainer.train_loader))
            self.report.progress(trainer.epoch + min(1.0, self._batch / nb), trainer.epochs,
                                 f"epoch {trainer.epoch + 1}/{trainer.epochs}")

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.train_seconds += time.monotonic() - self._t_epoch
        self._trained_epoch = True
        self._wait_for_copy()  # before this epoch's save overwrites last.pt

    def on_fit_epoch_end(self, trainer: Any) -> None:
        values = epoch_metrics(trainer)
        if not self._trained_epoch:  # Ultralytics' final evaluation of best.pt
            self.final = values
            return
        self._trained_epoch = False
        step = trainer.epoch + 1
        self.report.metrics(step, **values)
        self.report.progress(step, trainer.epochs, f"epoch {step}/{trainer.epochs} done")
        parts = [f"{k}={v:.4g}" for k, v in values.items() if k in
                 ("box_loss", "cls_loss", "mAP50", "mAP50_95")]
        self.report.log(f"epoch {step}: " + " ".join(parts))

    def on_model_save(self, trainer: Any) -> None:
        """Keep a resumable copy: Ultralytics strips the optimizer from last.pt at the end.
        Mid-run the copy is made in the background (training goes on; the next epoch's save
        waits for it); on the last save before the run ends it is made at once."""
        if not Path(trainer.last).exists():
            return
        self._wait_for_copy()
        epoch = trainer.epoch + 1
        if trainer.stop or epoch >= trainer.epochs:
            self._keep_resumable(Path(trainer.last), epoch)
        else:
            self._copy = threading.Thread(target=self._keep_resumable,
                                          args=(Path(trainer.last), epoch), daemon=True)
            self._copy.start()

    def _keep_resumable(self, last: Path, epoch: int) -> None:
        self.ckpt_dir.mkdir(exist_ok=True)
        tmp = self.ckpt_dir / "resume.pt.tmp"
        shutil.copyfile(last, tmp)
        os.replace(tmp, self.ckpt_dir / "resume.pt")
        self.report.checkpoint(self.ckpt_dir / "resume.pt", epoch)

    def _wait_for_copy(self) -> None:
        if self._copy is not None:
            self._copy.join()
            self._copy = None


def epoch_metrics(trainer: Any) -> dict[str, float]:
    """Train losses, val losses and box metrics of the epoch just finished, with short names."""
    out: dict[str, float] = {}
    losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None \
        else {}
    for k, v in {**losses, **(trainer.metrics or {})}.items():
        name = (k.replace("train/", "").replace("val/", "val_").replace("metrics/", "")
                .replace("(B)", "").replace("-", "_"))
        try:
            out[name] = float(v)
        except (TypeError, ValueError):
            continue
    train_parts = [out[k] for k in ("box_loss", "cls_loss", "dfl_loss") if k in out]
    val_parts = [out[k] for k in ("val_box_loss", "val_cls_loss", "val_dfl_loss") if k in out]
    if train_parts:
        out["train_loss"] = sum(train_parts)
    if val_parts and any(val_parts):
        out["val_loss"] = sum(val_parts)
    return out


def run(config: dict[str, Any], report: Any) -> None:
    """Train (or resume) one YOLO model and register weights, checkpoints and plots."""
    cfg = TrainConfig.from_dict(config)
    run_dir = Path(report.run_dir)
    configure_ultralytics(run_dir.parent.parent / "cache", cfg.offline)
    device = pick_device(cfg.device)
    if device != "cpu" and cfg.vram_budget:
        from studio.devices import emulate_card

        emulate_card(cfg.vram_budget, int(device.split(",")[0]))

    from ultralytics import YOLO

    from studio.safety import file_digest
    from tabs.yolo.detect import check_train_model, ultralytics_loading

    trusted = (bool(cfg.trusted_model) and Path(cfg.model).is_file()
               and file_digest(Path(cfg.model)) == cfg.trusted_model)
    model_src = check_train_model(cfg.model, trusted)  # before Ultralytics ever sees the path
    hooks = ReportCallbacks(report)
    resume_from = report.last_checkpoint()
    with ultralytics_loading(trusted):
        results, model = _train(cfg, report, hooks, resume_from, model_src, run_dir, device, YOLO)
    save_dir = Path(model.trainer.save_dir)
    summary = finish(save_dir, hooks, results, report)
    best = save_dir / "weights" / "best.pt"
    if cfg.plots and best.exists() and not report.should_stop():  # Cancel: leave in time
        try:
            with ultralytics_loading(False):  # our own job's checkpoint: the plain loader
                cm = confusion_matrix(best, cfg.data, cfg.imgsz, device, save_dir / "confusion")
            for fname, label in CONFUSION_FILES.items():
                if (save_dir / "confusion" / fname).exists():
                    report.artifact(save_dir / "confusion" / fname, kind="image",
                                    label=f"{label} at confidence {cm['conf']:g}")
            summary["confusion"] = cm
        except Exception as e:  # noqa: BLE001 - a missing plot must not fail a trained run
            report.log(f"confusion matrix not made: {type(e).__name__}: {e}")
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1))


def _train(cfg: TrainConfig, report: Any, hooks: ReportCallbacks, resume_from: Any,
           model_src: str, run_dir: Path, device: str, YOLO: Any) -> tuple[Any, Any]:  # noqa: N803
    if resume_from is not None:
        path, epoch = resume_from
        report.log(f"resuming from {path.name} after epoch {epoch}")
        model = YOLO(str(path))
        hooks.register(model)
        results = model.train(resume=str(path), device=device, workers=cfg.workers)
    else:
        model = YOLO(model_src)
        hooks.register(model)
        args = cfg.ultralytics_args()
        args.update(data=cfg.data, project=str(run_dir), name="train", exist_ok=True,
                    device=device, batch=auto_batch(cfg, device), verbose=False)
        if device == "cpu":
            args["amp"] = False  # AMP is a CUDA feature; its check would also try a download
        results = model.train(**args)
    return results, model


def finish(save_dir: Path, hooks: ReportCallbacks, results: Any, report: Any) -> dict[str, Any]:
    """Register weights and plots; return the summary shown in the results table."""
    weights = save_dir / "weights"
    if (weights / "best.pt").exists():
        report.artifact(weights / "best.pt", kind="model", label="best.pt")
    if (weights / "last.pt").exists():
        report.artifact(weights / "last.pt", kind="checkpoint", label="last.pt")
    seen = set()
    for fname, label in PLOT_FILES.items():
        if (save_dir / fname).exists() and label not in seen:
            seen.add(label)
            report.artifact(save_dir / fname, kind="image", label=label)
    if (save_dir / "results.csv").exists():
        report.artifact(save_dir / "results.csv", kind="file", label="per-epoch metrics")
    final = hooks.final or {}
    box = getattr(results, "box", None)
    if box is not None:
        final = {**final, "mAP50": float(box.map50), "mAP50_95": float(box.map),
                 "precision": float(box.mp), "recall": float(box.mr)}
    return {
        "final": final,
        "best": str(weights / "best.pt"),
        "save_dir": str(save_dir),
        "images_per_second": hooks.images_seen / hooks.train_seconds if hooks.train_seconds
        else None,
        "stopped_early": bool(report.should_stop()),
    }
