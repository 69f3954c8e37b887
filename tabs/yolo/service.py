"""YoloService: what the tab does, as plain methods on the shared Studio (no Gradio here).

It owns the dataset store, freezes a dataset into a content-addressed snapshot before a run
(so the run can be reproduced while labelling goes on), submits training jobs, exports and
benchmarks a finished run, and loads detectors through the shared model manager.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

from studio.jobs import ALL
from studio.safety import trust_token
from tabs.yolo.config import TrainConfig
from tabs.yolo.dataset import Dataset, DatasetStore
from tabs.yolo.detect import check_model_file, check_train_model, load_model, trained_models
from tabs.yolo.export import BenchRow, benchmark, export_all
from tabs.yolo.train import configure_ultralytics

KIND = "yolo"

# The offline starter: synthetic circles and squares with exact boxes (tabs.yolo.synthetic), a
# set small enough to train from scratch on a CPU in minutes. STARTER_RECIPE is what the Train
# tab suggests for it; STARTER_EXPECT says what that run scored when we measured it (see
# tests/jobs/test_yolo_train.py::test_starter_recipe_trains_to_a_useful_map).
STARTER_NAME = "shapes-starter"
STARTER_SIZE = dict(n_train=128, n_val=16, size=96, n_classes=2, seed=0)
STARTER_RECIPE = dict(model="yolov8n.yaml", epochs=50, imgsz=96, batch=8, close_mosaic=2)
STARTER_EXPECT = ("in our measurement 50 epochs took ~2 minutes on an idle 2-core CPU (about 10 "
                  "on a busy one) and mAP50 went from 0 to {map50} (mAP50-95 {map50_95}); "
                  "around epoch 18 it is still near 0.3, so let it run")
STARTER_MAP50, STARTER_MAP50_95 = "0.99", "0.86"  # tabs/yolo measurement, CPU, seed 0
SCRATCH_NOTE = (
    "**What to expect from scratch.** A `.yaml` model starts from random weights: on a set of "
    "20-100 real photos it usually stays at mAP 0 for tens of epochs and may never get far, "
    "which is expected and not a bug. Detectors learn from thousands of labelled boxes, or "
    "start from pretrained weights (a `.pt` name such as yolov8n.pt, which needs the internet "
    "once). Offline, try the **Starter dataset** on the Label tab first: it trains to a useful "
    "mAP in minutes with the settings it fills in below.")


def get_service(studio: Any) -> YoloService:
    """The one YoloService of a Studio (kept in ``studio.extras``)."""
    return studio.service("yolo", YoloService)


NO_SESSION = "this page has no session yet; reload it"
OWNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class YoloService:
    """Datasets, runs and weights are per owner (studio.sessions.owner_of): every method takes
    `owner`. An owner lists and changes its own datasets and reads the shared ones (made at
    the service level, or before owners existed: ``<home>/yolo/datasets``), which no page
    changes; its own live in ``<home>/yolo/owned/<owner>``, so two owners may each have a
    "parcels". Another owner's dataset, run or weights are answered as missing ones. None is a
    page without a session (shared things, read-only); ALL (the default) the studio itself."""

    def __init__(self, studio: Any):
        self.studio = studio
        self.home = Path(studio.settings.home) / "yolo"
        configure_ultralytics(Path(studio.settings.cache_dir), bool(studio.settings.offline))
        self.store = DatasetStore(self.home / "datasets")  # the shared datasets
        self.work_dir = self.home / "work"
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # ----- datasets ---------------------------------------------------------------------------
    def store_of(self, owner: Any) -> DatasetStore:
        """`owner`'s own datasets (the shared store for ALL)."""
        if owner is ALL:
            return self.store
        if owner is None or not OWNER_ID.match(str(owner)):
            raise ValueError(NO_SESSION)
        return DatasetStore(self.home / "owned" / owner)

    def _own_names(self, owner: Any) -> list[str]:
        """`owner`'s own dataset names (none for ALL or None); reading makes no folder."""
        if owner is ALL or owner is None:
            return []
        folder = self.home / "owned" / str(owner)
        return self.store_of(owner).names() if folder.is_dir() else []

    def dataset_names(self, owner: Any = ALL) -> list[str]:
        """The datasets `owner` may pick: its own, then the shared ones."""
        own = self._own_names(owner)
        return own + [n for n in self.store.names() if n not in own]

    def dataset(self, name: str | None, owner: Any = ALL, write: bool = False) -> Dataset:
        """The dataset `owner` means by `name`: its own, else a shared one (refused when
        `write`: a page never changes a shared dataset)."""
        if not name:
            raise ValueError("pick or create a dataset first")
        if name in self._own_names(owner):
            return self.store_of(owner).get(name)
        if name not in self.store.names():
            raise ValueError(f"No dataset {name!r}.")
        if write and owner is not ALL:
            raise ValueError(NO_SESSION if owner is None else
                             f"dataset {name!r} is shared (made outside the studio's pages): "
                             "it can be trained on here, not changed; create one of your own")
        return self.store.get(name)

    def create_dataset(self, name: str, classes: list[str] | None = None,
                       owner: Any = ALL) -> Dataset:
        if owner is not ALL and name in self.store.names():
            raise ValueError(f"{name!r} is the name of a shared dataset; pick another name")
        return self.store_of(owner).create(name, classes)

    def starter_dataset(self, owner: Any = ALL) -> tuple[Dataset, str]:
        """The synthetic starter dataset (made once per owner: each labels its own copy), and
        a note on how to train it."""
        import tempfile

        from tabs.yolo.synthetic import write_yolo_dataset

        store = self.store_of(owner)
        if STARTER_NAME not in store.names():
            with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
                data = write_yolo_dataset(Path(tmp) / "src", **STARTER_SIZE)
                ds = store.create(STARTER_NAME)
                rep = ds.import_yolo(data)
                if rep.problems:
                    raise ValueError("the starter dataset could not be written: "
                                     + "; ".join(rep.problems[:3]))
        ds = store.get(STARTER_NAME)
        done, total = ds.counts()
        r = STARTER_RECIPE
        expect = STARTER_EXPECT.format(map50=STARTER_MAP50, map50_95=STARTER_MAP50_95)
        note = (f"**{STARTER_NAME}**: {total} synthetic images of circles and squares "
                f"({done} labelled, train/val split set). On the Train tab pick it with model "
                f"`{r['model']}`, {r['epochs']} epochs, image size {r['imgsz']}, batch "
                f"{r['batch']}: {expect}.")
        return ds, note

    def snapshot(self, ds: Dataset) -> tuple[Path, str]:
        """Freeze the labelled part of a dataset; the same content maps to the same folder."""
        digest = ds.content_hash()
        dest = self.home / "snapshots" / f"{ds.name}-{digest}"
        if not (dest / "data.yaml").exists():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            ds.export_yolo(tmp)
            tmp.replace(dest) if not dest.exists() else shutil.rmtree(tmp)
        return dest / "data.yaml", digest

    # ----- training ---------------------------------------------------------------------------
    def start_training(self, dataset_name: str, cfg: TrainConfig,
                       trust_model: bool = False, owner: Any = ALL) -> str:
        """Check the model file and settings, freeze the dataset, queue the job. `trust_model`
        is the user's "I trust this file" for a local .pt; the job gets that file's sha256, so
        the trust covers exactly those bytes."""
        self.check_model_path(cfg.model, owner)  # another owner's weights are no start
        trusted = bool(trust_model) or self.is_trusted(Path(cfg.model))
        cfg.model = check_train_model(cfg.model, trusted)
        cfg.trusted_model = trust_token(cfg.model) if trusted and Path(cfg.model).is_file() \
            else ""
        cfg.check_fields()  # settings first: nothing is frozen or queued for a bad value
        ds = self.dataset(dataset_name, owner)
        data_yaml, digest = self.snapshot(ds)
        cfg.data = str(data_yaml)
        cfg.offline = cfg.offline or bool(self.studio.settings.offline)
        if self.studio.device != "cuda":
            cfg.device = "cpu"
        elif not cfg.vram_budget:
            cfg.vram_budget = cfg.vram_estimate()
        cfg.validate()
        title = f"YOLO {Path(cfg.model).stem} on {ds.name} ({cfg.epochs} ep, {cfg.imgsz}px)"
        return self.studio.jobs.submit(kind=KIND, entry="tabs.yolo.train:run",
                                       config=cfg.to_dict(), title=title,
                                       vram_bytes=cfg.vram_estimate(), dataset_hash=digest,
                                       seed=cfg.seed, owner=owner)

    def runs(self, owner: Any = ALL) -> list[Any]:
        return self.studio.jobs.list_runs(KIND, owner=owner)

    def view(self, run_id: str | None, owner: Any = ALL, log_lines: int = 40) -> Any:
        """A run `owner` may see; another owner's is "No run X.", as a missing one."""
        try:
            return self.studio.jobs.view(run_id or "", log_lines=log_lines, owner=owner)
        except KeyError:
            raise ValueError(f"No run {run_id}.") from None

    def run_results(self, run_id: str, owner: Any = ALL
                    ) -> tuple[list[str], list[list[Any]], list[tuple[str, str]]]:
        """(headers, per-epoch rows from results.csv, [(image path, label)]) of one run."""
        v = self.view(run_id, owner)
        headers: list[str] = []
        rows: list[list[Any]] = []
        csv_files = [a["path"] for a in v.artifacts if a["path"].endswith("results.csv")]
        if csv_files and Path(csv_files[0]).exists():
            with open(csv_files[0]) as f:
                table = list(csv.reader(f))
            if table:
                keep = [i for i, h in enumerate(table[0]) if not h.strip().startswith("lr/")]
                headers = [table[0][i].strip() for i in keep]
                rows = [[_num(r[i]) for i in keep] for r in table[1:]]
        images = [(a["path"], a["label"]) for a in v.artifacts if a["kind"] == "image"]
        return headers, rows, images

    def best_weights(self, run_id: str, owner: Any = ALL) -> Path:
        v = self.view(run_id, owner)
        for a in v.artifacts:
            if a["kind"] == "model" and Path(a["path"]).exists():
                return Path(a["path"])
        raise ValueError(f"run {run_id} has no trained weights yet (status: {v.status})")

    # ----- export and benchmark -------------------------------------------------------------
    def export_and_benchmark(self, run_id: str, runs: int = 20, progress: Any = None,
                             owner: Any = ALL) -> tuple[list[BenchRow], list[str]]:
        """Export, then time and score each format. `progress(fraction, desc)` is told each
        step (export, then latency and mAP per format). The exports are written into the run
        folder: only the run's owner exports it (a shared run is read-only)."""
        weights = self.best_weights(run_id, owner)
        if owner is not ALL and self.view(run_id, owner, log_lines=0).owner != owner:
            raise ValueError(f"run {run_id} was started outside the studio's pages; it is "
                             "read-only here: export one of your own runs")
        cfg = json.loads((Path(self.studio.jobs.view(run_id).run_dir) / "config.json")
                         .read_text())
        out_dir = Path(self.studio.jobs.view(run_id).run_dir) / "export"
        device = "0" if self.studio.device == "cuda" else "cpu"
        if progress is not None:
            progress(0.05, desc="exporting ONNX")
        files, notes = export_all(weights, int(cfg["imgsz"]), out_dir, device)
        rows = benchmark(files, Path(cfg["data"]), int(cfg["imgsz"]), out_dir / "bench",
                         device=device, runs=runs, progress=progress)
        (out_dir / "benchmark.json").write_text(json.dumps(
            {"device": self.studio.device_summary(), "rows": [r.as_dict() for r in rows],
             "notes": notes}, indent=1))
        return rows, notes

    # ----- detection ------------------------------------------------------------------------
    def model_choices(self, owner: Any = ALL) -> list[tuple[str, str]]:
        return trained_models(self.runs(owner))

    def check_model_path(self, path: str | Path, owner: Any = ALL) -> Path:
        """A model path from the request: inside the runs folder only a run `owner` may see
        (another owner's weights are "No model ...", as missing ones); elsewhere (an upload)
        as it is."""
        p = Path(path)
        runs = Path(self.studio.settings.runs_dir).resolve()
        try:
            rel = p.resolve().relative_to(runs)
        except ValueError:
            return p
        if owner is not ALL and not (rel.parts and self.studio.jobs.owns(rel.parts[0], owner)):
            raise ValueError(f"No model {p.name!r}.")
        return p

    def is_trusted(self, path: Path) -> bool:
        """Files inside our runs folder were written by our own jobs."""
        return Path(path).resolve().is_relative_to(Path(self.studio.settings.runs_dir).resolve())

    def model_key(self, path: str | Path, trust_pickle: bool = False, owner: Any = ALL) -> str:
        """Register a detector with the model manager (once) and return its key."""
        from studio.models import ModelSpec

        p = self.check_model_path(path, owner)
        trusted = bool(trust_pickle) or self.is_trusted(p)
        check_model_file(p, trusted=trusted)
        key = f"yolo:{p.resolve()}" + (":trusted" if trusted else "")
        device = self.studio.device
        return self.studio.models.ensure(key, lambda: ModelSpec(
            key=key, title=f"YOLO {p.name}",
            load=lambda dev: load_model(p, device, trusted=trusted),
            # ONNX Runtime's memory is invisible to torch: its weights (the file) are the
            # ledger's figure; a .pt is measured, the estimate only makes room first
            estimate=(1 if p.suffix.lower() == ".onnx" else 3) * p.stat().st_size,
            reserve=256 << 20))


def _num(s: str) -> Any:
    try:
        return round(float(s), 5)
    except ValueError:
        return s.strip()
