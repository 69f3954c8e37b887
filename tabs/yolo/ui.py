"""The YOLO tab: Label | Train | Export & benchmark | Detect. Thin: widgets to logic calls.

Box drawing uses the `gradio_image_annotation` component (draw, move, resize, delete, pick the
class per box); it installs and runs with Gradio 6. Every action a script may need also has a
plain JSON endpoint (``yolo_get_boxes``, ``yolo_set_boxes``, ...), so labelling is scriptable.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from studio.ui.errors import friendly
from tabs.yolo.config import MODEL_CHOICES, TrainConfig
from tabs.yolo.detect import ROW_HEADERS, detect_image, detect_video, prelabel
from tabs.yolo.export import TABLE_HEADERS, table_rows
from tabs.yolo.formats import Box
from tabs.yolo.service import YoloService, get_service

KEYS_JS = """
if (!window.__yoloKeys) {
  window.__yoloKeys = true;
  document.addEventListener('keydown', (e) => {
    const t = e.target; const tag = (t && t.tagName || '').toLowerCase();
    if (tag === 'input' || tag === 'textarea' || (t && t.isContentEditable)) return;
    const id = (e.key === 'd' || e.key === 'ArrowRight') ? 'yolo-next'
             : (e.key === 'a' || e.key === 'ArrowLeft') ? 'yolo-prev' : null;
    const el = id && document.getElementById(id);
    if (el && el.offsetParent !== null) { e.preventDefault(); el.click(); }
  });
}
"""


_err = friendly  # the studio's one handler wrapper: bad input -> a message, never bare "Error"


def _classes_from_text(text: str) -> list[str]:
    return [c.strip() for c in (text or "").replace(",", "\n").splitlines() if c.strip()]


def _counts_md(svc: YoloService, name: str | None) -> str:
    if not name:
        return "No dataset selected."
    done, total = svc.dataset(name).counts()
    return f"**{done} of {total} labelled**"


def _annot_value(svc: YoloService, name: str, image: str) -> dict[str, Any]:
    ds = svc.dataset(name)
    boxes = ds.boxes(image) or []
    classes = ds.classes
    return {"image": str(ds.image_path(image)),
            "boxes": [{"xmin": round(b.x1), "ymin": round(b.y1), "xmax": round(b.x2),
                       "ymax": round(b.y2),
                       "label": classes[b.cls] if b.cls < len(classes) else str(b.cls)}
                      for b in boxes]}


def _boxes_from_dicts(svc: YoloService, name: str, items: list[dict[str, Any]]) -> list[Box]:
    """Annotator or API boxes (label name or cls index, pixel corners) to dataset boxes."""
    ds = svc.dataset(name)
    out = []
    for i, d in enumerate(items, 1):
        if not isinstance(d, dict):
            raise ValueError(f"box {i}: each box is an object with xmin, ymin, xmax, ymax and "
                             "label (or cls)")
        try:
            corners = [float(d[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except KeyError as e:
            raise ValueError(f"box {i}: missing {e.args[0]} (need xmin, ymin, xmax, ymax)") \
                from None
        except (TypeError, ValueError):
            raise ValueError(f"box {i}: xmin, ymin, xmax and ymax must be numbers") from None
        if d.get("label"):
            cls = ds.class_index(str(d["label"]))  # a new name becomes a new class
        elif "cls" in d:
            try:
                cls = int(d["cls"])
            except (TypeError, ValueError):
                raise ValueError(f"box {i}: cls must be a class number") from None
        else:
            if not ds.classes:
                raise ValueError("add at least one class before drawing boxes")
            cls = 0
        x1, x2 = sorted((corners[0], corners[2]))
        y1, y2 = sorted((corners[1], corners[3]))
        out.append(Box(cls, x1, y1, x2, y2))
    return out


def _same(a: list[Box] | None, b: list[Box]) -> bool:
    """Equal within the annotator's whole-pixel rounding."""
    if a is None:
        return False
    return len(a) == len(b) and all(
        x.cls == y.cls and max(abs(x.x1 - y.x1), abs(x.y1 - y.y1), abs(x.x2 - y.x2),
                               abs(x.y2 - y.y2)) <= 1.0 for x, y in zip(a, b, strict=False))


def build_ui(studio: Any) -> None:
    from gradio_image_annotation import image_annotator

    from studio.ui.widgets import job_panel

    svc = get_service(studio)
    gr.HTML("", js_on_load=KEYS_JS, visible=True, padding=False, container=False)
    with gr.Tabs():
        with gr.Tab("Label"):
            _label_tab(svc, image_annotator)
        with gr.Tab("Train"):
            _train_tab(studio, svc, job_panel)
        with gr.Tab("Export & benchmark"):
            _export_tab(svc)
        with gr.Tab("Detect"):
            _detect_tab(studio, svc)


# ----- Label ------------------------------------------------------------------------------------
def _label_tab(svc: YoloService, image_annotator: Any) -> None:
    with gr.Row():
        dataset = gr.Dropdown(label="Dataset", choices=svc.store.names(), value=None, scale=3,
                              allow_custom_value=True)
        new_name = gr.Textbox(label="New dataset name", placeholder="e.g. parcels", scale=2)
        create = gr.Button("Create", scale=1)
    with gr.Row():
        classes = gr.Textbox(label="Classes (one per line or comma-separated)", lines=2, scale=4)
        save_classes = gr.Button("Save classes", scale=1)
    with gr.Accordion("Add images or import a dataset", open=False):
        uploads = gr.File(label="Images, a zip of images, or a zip of a YOLO (data.yaml) or "
                          "COCO (*.json) dataset", file_count="multiple",
                          file_types=["image", ".zip"])
        add = gr.Button("Add to dataset")
        report = gr.Markdown()
    with gr.Row():
        prev_btn = gr.Button("◀ Prev (a)", elem_id="yolo-prev", scale=1)
        image = gr.Dropdown(label="Image", choices=[], scale=4, allow_custom_value=True)
        next_btn = gr.Button("Next (d) ▶", elem_id="yolo-next", scale=1)
        only_todo = gr.Checkbox(label="Only unlabelled", scale=1)
    counts = gr.Markdown("No dataset selected.")
    annot = image_annotator(label="Draw boxes: drag to draw, click a box to move, resize or "
                            "change its class; every edit is saved at once",
                            image_type="filepath", sources=[], use_default_label=True,
                            show_clear_button=False, show_remove_button=True, height=520)
    with gr.Row():
        background = gr.Button("Mark: no objects")
        clear = gr.Button("Mark unlabelled")
        pre_model = gr.Dropdown(label="Pre-label with model", choices=svc.model_choices(),
                                scale=2, allow_custom_value=True)
        pre_conf = gr.Slider(0.05, 0.95, value=0.25, step=0.05, label="Confidence")
        pre_btn = gr.Button("Pre-label")
    with gr.Row():
        val_frac = gr.Slider(0.05, 0.5, value=0.2, step=0.05, label="Validation fraction")
        split_btn = gr.Button("Split train/val")
        export_btn = gr.Button("Export YOLO zip")
    split_md = gr.Markdown()
    export_file = gr.File(label="Dataset zip (yolo train data=data.yaml)", interactive=False)
    # Plain-JSON endpoints for scripts (gradio_client); hidden in the page.
    api_boxes = gr.JSON(visible=False)
    api_in = gr.Textbox(visible=False)

    @_err
    def create_dataset(name: str, class_text: str):
        ds = svc.store.create((name or "").strip(), _classes_from_text(class_text))
        return gr.update(choices=svc.store.names(), value=ds.name), ""

    @_err
    def select_dataset(name: str | None, only: bool):
        if not name:
            return "", gr.update(choices=[], value=None), "No dataset selected."
        ds = svc.dataset(name)
        names = ds.images(only_unlabelled=only)
        return ("\n".join(ds.classes), gr.update(choices=names, value=names[0] if names else None),
                _counts_md(svc, name))

    @_err
    def set_classes(name: str, class_text: str):
        ds = svc.dataset(name)
        return f"Classes: {', '.join(ds.set_classes(_classes_from_text(class_text)))}"

    @_err
    def add_files(name: str, files: list[Any] | None, only: bool):
        if not files:
            raise gr.Error("Choose some files first.")
        ds = svc.dataset(name)
        rep = ds.add_files([Path(getattr(f, "name", f)) for f in files], svc.work_dir)
        names = ds.images(only_unlabelled=only)
        return (rep.summary(), "\n".join(ds.classes),
                gr.update(choices=names, value=names[0] if names else None),
                _counts_md(svc, name))

    @_err
    def show_image(name: str | None, img: str | None):
        if not name or not img:
            return gr.update(value=None), _counts_md(svc, name)
        classes_now = svc.dataset(name).classes
        value = _annot_value(svc, name, img)
        return gr.update(value=value, label_list=classes_now), _counts_md(svc, name)

    def step(delta: int):
        @_err
        def go(name: str | None, img: str | None, only: bool):
            if not name:
                raise gr.Error("Pick a dataset first.")
            names = svc.dataset(name).images(only_unlabelled=only)
            if not names:
                return gr.update(choices=[], value=None)
            i = names.index(img) + delta if img in names else 0
            return gr.update(choices=names, value=names[max(0, min(len(names) - 1, i))])
        return go

    @_err
    def save_from_annotator(name: str | None, img: str | None, value: dict | None):
        """Save what the annotator shows, unless it is what we just loaded (its change event
        also fires when we set the value)."""
        if not name or not img or not value or not value.get("image"):
            return gr.skip()
        ds = svc.dataset(name)
        boxes = _boxes_from_dicts(svc, name, value.get("boxes") or [])
        stored = ds.boxes(img)
        if (stored is None and not boxes) or _same(stored, boxes):
            return gr.skip()
        ds.set_boxes(img, boxes)
        return _counts_md(svc, name)

    @_err
    def mark(name: str, img: str, background_: bool):
        ds = svc.dataset(name)
        if not img:
            raise gr.Error("Pick an image first.")
        ds.set_boxes(img, []) if background_ else ds.clear_labels(img)
        return gr.update(value=_annot_value(svc, name, img)), _counts_md(svc, name)

    @_err
    def do_prelabel(name: str, img: str, model_path: str | None, conf: float):
        if not model_path:
            raise gr.Error("Train a model first (Train tab), then pick it here.")
        ds = svc.dataset(name)
        key = svc.model_key(model_path)
        from PIL import Image

        rgb = Image.open(ds.image_path(img)).convert("RGB")
        import numpy as np

        with svc.studio.models.use(key) as model:
            boxes = prelabel(model, np.asarray(rgb), ds.classes, conf=conf,
                             device=svc.studio.device)
        value = {"image": str(ds.image_path(img)),
                 "boxes": [{"xmin": round(b.x1), "ymin": round(b.y1), "xmax": round(b.x2),
                            "ymax": round(b.y2), "label": ds.classes[b.cls]} for b in boxes]}
        gr.Info(f"{len(boxes)} suggested box(es): fix or delete them; edits are saved.")
        return value

    @_err
    def split(name: str, frac: float):
        s = svc.dataset(name).split(float(frac))
        return f"Split: {s['train']} train, {s['val']} val (labelled images)."

    @_err
    def export_zip(name: str):
        ds = svc.dataset(name)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(svc.studio.settings.exports_dir) / f"{ds.name}-yolo-{stamp}.zip"
        return str(ds.export_zip(out))

    # --- script API (JSON in and out) ---
    @_err
    def api_images(name: str, only: bool):
        ds = svc.dataset(name)
        done, total = ds.counts()
        return {"images": ds.images(only_unlabelled=bool(only)), "labelled": done,
                "total": total, "classes": ds.classes}

    @_err
    def api_get_boxes(name: str, img: str):
        ds = svc.dataset(name)
        boxes = ds.boxes(img)
        return {"image": img, "labelled": boxes is not None,
                "boxes": [b.as_dict(ds.classes) for b in boxes or []]}

    @_err
    def api_set_boxes(name: str, img: str, boxes_json: str):
        try:
            items = json.loads(boxes_json or "[]")
        except json.JSONDecodeError as e:
            raise gr.Error(f"boxes must be a JSON list: {e}") from None
        if not isinstance(items, list):
            raise gr.Error("boxes must be a JSON list of {xmin, ymin, xmax, ymax, label|cls}")
        n = svc.dataset(name).set_boxes(img, _boxes_from_dicts(svc, name, items))
        return api_get_boxes(name, img) | {"saved": n}

    create.click(create_dataset, [new_name, classes], [dataset, new_name],
                 api_name="yolo_create_dataset")
    dataset.change(select_dataset, [dataset, only_todo], [classes, image, counts],
                   api_visibility="private")
    only_todo.change(select_dataset, [dataset, only_todo], [classes, image, counts],
                     api_visibility="private")
    save_classes.click(set_classes, [dataset, classes], [report], api_name="yolo_set_classes")
    add.click(add_files, [dataset, uploads, only_todo], [report, classes, image, counts],
              api_name="yolo_add_files")
    image.change(show_image, [dataset, image], [annot, counts], api_visibility="private")
    prev_btn.click(step(-1), [dataset, image, only_todo], [image], api_visibility="private")
    next_btn.click(step(+1), [dataset, image, only_todo], [image], api_visibility="private")
    annot.change(save_from_annotator, [dataset, image, annot], [counts],
                 api_visibility="private", show_progress="hidden")
    background.click(lambda n, i: mark(n, i, True), [dataset, image], [annot, counts],
                     api_visibility="private")
    clear.click(lambda n, i: mark(n, i, False), [dataset, image], [annot, counts],
                api_visibility="private")
    pre_model.focus(lambda: gr.update(choices=svc.model_choices()), outputs=[pre_model],
                    api_visibility="private", queue=False)
    pre_btn.click(do_prelabel, [dataset, image, pre_model, pre_conf], [annot],
                  api_visibility="private", concurrency_id="gpu")
    split_btn.click(split, [dataset, val_frac], [split_md], api_name="yolo_split")
    export_btn.click(export_zip, [dataset], [export_file], api_name="yolo_export_dataset")
    hidden = gr.Button(visible=False)
    hidden.click(api_images, [dataset, only_todo], [api_boxes], api_name="yolo_images")
    gr.Button(visible=False).click(api_get_boxes, [dataset, image], [api_boxes],
                                   api_name="yolo_get_boxes")
    gr.Button(visible=False).click(api_set_boxes, [dataset, image, api_in], [api_boxes],
                                   api_name="yolo_set_boxes")


# ----- Train ------------------------------------------------------------------------------------
def _train_tab(studio: Any, svc: YoloService, job_panel: Any) -> None:
    meta = {name: f.metadata for name, f in TrainConfig.__dataclass_fields__.items()}
    d = TrainConfig()
    default_model = studio.choices["yolo"].source if "yolo" in studio.choices else d.model
    with gr.Row():
        dataset = gr.Dropdown(label="Dataset", choices=svc.store.names(), scale=2,
                              allow_custom_value=True)
        model = gr.Dropdown(label=meta["model"]["label"], info=meta["model"]["help"],
                            choices=MODEL_CHOICES, value=default_model, allow_custom_value=True,
                            scale=3)
    with gr.Row():
        epochs = gr.Number(d.epochs, label=meta["epochs"]["label"], precision=0)
        imgsz = gr.Number(d.imgsz, label=meta["imgsz"]["label"], info=meta["imgsz"]["help"],
                          precision=0)
        batch = gr.Number(d.batch, label=meta["batch"]["label"], info=meta["batch"]["help"],
                          precision=0)
        patience = gr.Number(d.patience, label=meta["patience"]["label"], precision=0)
        seed = gr.Number(d.seed, label=meta["seed"]["label"], precision=0)
    with gr.Row():
        amp = gr.Checkbox(d.amp, label=meta["amp"]["label"], info=meta["amp"]["help"])
        mosaic = gr.Slider(0, 1, value=d.mosaic, step=0.05, label=meta["mosaic"]["label"])
        fliplr = gr.Slider(0, 1, value=d.fliplr, step=0.05, label=meta["fliplr"]["label"])
        hsv = gr.Checkbox(d.hsv, label=meta["hsv"]["label"])
        trust_model = gr.Checkbox(False, label="I trust this model file",
                                  info="a .pt from elsewhere is a pickle and can run code; "
                                  "untrusted ones load only if they hold a plain checkpoint")
    start = gr.Button("Start training", variant="primary")
    panel = job_panel(studio, kind="yolo", plot_keys=("box_loss", "cls_loss", "mAP50",
                                                      "mAP50_95"))
    with gr.Accordion("Results: metrics table and plots", open=False):
        show = gr.Button("Show results of the selected run")
        table = gr.Dataframe(label="Per-epoch metrics", interactive=False)
        gallery = gr.Gallery(label="PR curve, confusion matrix, sample predictions", columns=3,
                             height=420)

    @_err
    def start_training(ds, model_, ep, sz, b, pat, sd, amp_, mos, flip, hsv_, trust_=False):
        _c = TrainConfig.coerce  # a bad number names its field
        cfg = TrainConfig(model=(model_ or "").strip() or d.model, epochs=_c("epochs", ep),
                          imgsz=_c("imgsz", sz), batch=_c("batch", b or 0),
                          patience=_c("patience", pat), seed=_c("seed", sd), amp=bool(amp_),
                          mosaic=_c("mosaic", mos), fliplr=_c("fliplr", flip), hsv=bool(hsv_),
                          data="pending")
        run_id = svc.start_training(ds, cfg, trust_model=bool(trust_))
        return panel.select(run_id, studio)

    @_err
    def results(run_id: str | None):
        if not run_id:
            raise gr.Error("Pick a run above.")
        headers, rows, images = svc.run_results(run_id)
        import pandas as pd

        return pd.DataFrame(rows, columns=headers) if headers else None, images

    dataset.focus(lambda: gr.update(choices=svc.store.names()), outputs=[dataset],
                  api_visibility="private", queue=False)
    start.click(start_training, [dataset, model, epochs, imgsz, batch, patience, seed, amp,
                                 mosaic, fliplr, hsv, trust_model], [panel.run_picker],
                api_name="yolo_train")
    show.click(results, [panel.run_picker], [table, gallery], api_name="yolo_results")


# ----- Export & benchmark -----------------------------------------------------------------------
def _export_tab(svc: YoloService) -> None:
    gr.Markdown("Export the best weights of a finished run to ONNX (and a TensorRT engine when "
                "TensorRT is installed), then time each format on this machine and score it on "
                "the run's val set.")
    with gr.Row():
        run = gr.Dropdown(label="Run", choices=[], scale=4, allow_custom_value=True)
        go = gr.Button("Export and benchmark", variant="primary", scale=1)
    table = gr.Dataframe(headers=TABLE_HEADERS, label="Latency and accuracy per format",
                         interactive=False)
    notes = gr.Markdown()
    files = gr.File(label="Exported files", file_count="multiple", interactive=False)

    def run_choices():
        return [(v.title + f" · {v.status}", v.id) for v in svc.runs()
                if any(a["kind"] == "model" for a in v.artifacts)]

    @_err
    def export(run_id: str | None, progress=gr.Progress()):  # noqa: B008
        if not run_id:
            raise gr.Error("Pick a finished run.")
        progress(0.1, desc="exporting ONNX, then timing each format")
        rows, note = svc.export_and_benchmark(run_id)
        return table_rows(rows), "\n".join(f"- {n}" for n in note), [r.file for r in rows]

    run.focus(lambda: gr.update(choices=run_choices()), outputs=[run], api_visibility="private",
              queue=False)
    go.click(export, [run], [table, notes, files], api_name="yolo_export",
             concurrency_id="gpu")


# ----- Detect -----------------------------------------------------------------------------------
def _detect_tab(studio: Any, svc: YoloService) -> None:
    with gr.Row():
        model = gr.Dropdown(label="Model (trained here)", choices=svc.model_choices(), scale=3,
                            allow_custom_value=True)
        upload = gr.File(label="…or upload a model (.onnx, or .pt if you trust it)",
                         file_types=[".onnx", ".pt"], scale=2)
        trust = gr.Checkbox(label="I trust this file (a .pt is a pickle and can run code)",
                            value=False)
    with gr.Row():
        conf = gr.Slider(0.01, 0.99, value=0.25, step=0.01, label="Confidence")
        iou = gr.Slider(0.05, 0.95, value=0.7, step=0.05, label="IoU (NMS)")
    with gr.Tab("Image / webcam"):
        with gr.Row():
            inp = gr.Image(label="Image", sources=["upload", "webcam", "clipboard"], type="numpy")
            out = gr.Image(label="Detections (download with the button)", format="png")
        go = gr.Button("Detect", variant="primary")
        rows = gr.Dataframe(headers=ROW_HEADERS, label="Boxes", interactive=False)
    with gr.Tab("Video file"):
        vin = gr.Video(label="Video", sources=["upload"])
        vgo = gr.Button("Detect in video", variant="primary")
        vout = gr.Video(label="Annotated video")

    def resolve(model_path: str | None, up: Any, trusted: bool) -> str:
        if up is not None:
            path = Path(getattr(up, "name", up))
            return svc.model_key(path, trust_pickle=bool(trusted))
        if not model_path:
            raise gr.Error("Pick a trained model or upload one.")
        return svc.model_key(model_path)

    @_err
    def run_image(image, model_path, up, trusted, c, i):
        if image is None:
            raise gr.Error("Add an image (upload, webcam or paste).")
        key = resolve(model_path, up, trusted)
        with studio.models.use(key) as m:
            annotated, dets = detect_image(m, image, float(c), float(i), device=studio.device)
        return annotated, [d.row() for d in dets]

    @_err
    def run_video(video, model_path, up, trusted, c, i, progress=gr.Progress()):  # noqa: B008
        if not video:
            raise gr.Error("Upload a video file.")
        key = resolve(model_path, up, trusted)
        out_path = Path(tempfile.mkdtemp(dir=svc.work_dir)) / "detections.mp4"
        with studio.models.use(key) as m:
            path, _ = detect_video(m, Path(video), out_path, float(c), float(i),
                                   device=studio.device, progress=progress)
        return str(path)

    model.focus(lambda: gr.update(choices=svc.model_choices()), outputs=[model],
                api_visibility="private", queue=False)
    go.click(run_image, [inp, model, upload, trust, conf, iou], [out, rows],
             api_name="yolo_detect", concurrency_id="gpu")
    inp.stream(run_image, [inp, model, upload, trust, conf, iou], [out, rows],
               api_visibility="private", concurrency_id="gpu", stream_every=0.5)
    vgo.click(run_video, [vin, model, upload, trust, conf, iou], [vout],
              api_name="yolo_detect_video", concurrency_id="gpu")
