"""The YOLO tab: Label | Train | Export & benchmark | Detect. Thin: widgets to logic calls.

Box drawing uses the `gradio_image_annotation` component (draw, move, resize, delete, pick the
class per box); it installs and runs with Gradio 6. Labels never change behind the user's back:
a new box takes the class shown in "Class for new boxes" (keys 1-9, one colour per class),
half-drawn boxes are ignored, pre-label shows proposals next to the user's boxes and saves them
only on Accept, and renaming or reordering classes rewrites the label files so every box keeps
its class. Every action a script may need also has a plain JSON endpoint (``yolo_get_boxes``,
``yolo_set_boxes``, ...), so labelling is scriptable.
"""

from __future__ import annotations

import html
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from studio.jobs import ALL
from studio.sessions import owner_of
from studio.ui.errors import friendly
from studio.ui.examples import assets_in
from studio.ui.widgets import fill_on_load, owner_state
from tabs.yolo.config import MODEL_CHOICES, TrainConfig
from tabs.yolo.detect import ROW_HEADERS, detect_image, detect_video, prelabel
from tabs.yolo.export import TABLE_HEADERS, table_rows
from tabs.yolo.formats import Box
from tabs.yolo.service import (
    SCRATCH_NOTE,
    STARTER_NAME,
    STARTER_RECIPE,
    YoloService,
    get_service,
)

KEYS_JS = """
if (!window.__yoloKeys) {
  window.__yoloKeys = true;
  // Capture phase: the canvas itself uses 'd' for its drag mode and stops the event, so 'd' and
  // 'a' are taken here first (next/previous image), and 1-9 pick the class for new boxes.
  document.addEventListener('keydown', (e) => {
    const t = e.target; const tag = (t && t.tagName || '').toLowerCase();
    if (tag === 'input' || tag === 'textarea' || tag === 'select' || (t && t.isContentEditable))
      return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (/^[1-9]$/.test(e.key)) {
      const radios = document.querySelectorAll('#yolo-class input[type=radio]');
      const r = radios[parseInt(e.key, 10) - 1];
      if (r && r.offsetParent !== null) { e.preventDefault(); e.stopPropagation(); r.click(); }
      return;
    }
    const id = (e.key === 'd' || e.key === 'ArrowRight') ? 'yolo-next'
             : (e.key === 'a' || e.key === 'ArrowLeft') ? 'yolo-prev' : null;
    const el = id && document.getElementById(id);
    if (el && el.offsetParent !== null) { e.preventDefault(); e.stopPropagation(); el.click(); }
  }, true);
}
"""

# One colour per class, the same on the canvas, in the class picker and in the legend.
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3",
           "#808000", "#000075"]
_FRESH_SECONDS = 3.0  # how long a just-drawn box ignores the canvas' own "last label" echo


def class_colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _rgb(hex_colour: str) -> str:
    """'#rrggbb' as the canvas' 'rgb(r, g, b)' (what it sends back, too)."""
    r, g, b = (int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


_err = friendly  # the studio's one handler wrapper: bad input -> a message, never bare "Error"


def _classes_from_text(text: str) -> list[str]:
    return [c.strip() for c in (text or "").replace(",", "\n").splitlines() if c.strip()]


def _counts_md(svc: YoloService, name: str | None, who: Any = ALL) -> str:
    if not name:
        return "No dataset selected."
    done, total = svc.dataset(name, who).counts()
    return f"**{done} of {total} labelled**"


def legend_html(classes: list[str]) -> str:
    """The class colours with their hotkeys, shown above the canvas."""
    if not classes:
        return "<span>No classes yet: type them in the Classes box and Save classes.</span>"
    chips = [f'<span style="display:inline-block;margin:0 10px 2px 0">'
             f'<span style="display:inline-block;width:12px;height:12px;border-radius:2px;'
             f'vertical-align:middle;background:{class_colour(i)}"></span> '
             f'<b>{i + 1}</b> {html.escape(c)}</span>' for i, c in enumerate(classes[:40])]
    return "<div class='yolo-legend'>" + "".join(chips) + "</div>"


def _box_dict(b: Box, classes: list[str]) -> dict[str, Any]:
    return {"xmin": round(b.x1), "ymin": round(b.y1), "xmax": round(b.x2), "ymax": round(b.y2),
            "label": classes[b.cls] if b.cls < len(classes) else str(b.cls),
            "color": _rgb(class_colour(b.cls))}


def _annot_value(svc: YoloService, name: str, image: str, boxes: list[Box] | None = None,
                 who: Any = ALL) -> dict[str, Any]:
    ds = svc.dataset(name, who)
    if boxes is None:
        boxes = ds.boxes(image) or []
    classes = ds.classes
    return {"image": str(ds.image_path(image)), "boxes": [_box_dict(b, classes) for b in boxes]}


def _annot_update(svc: YoloService, name: str, image: str, boxes: list[Box] | None = None,
                  who: Any = ALL) -> Any:
    """The canvas showing `boxes` (default: the stored ones) with today's class names/colours."""
    classes = svc.dataset(name, who).classes
    return gr.update(value=_annot_value(svc, name, image, boxes, who), label_list=classes,
                     label_colors=[class_colour(i) for i in range(len(classes))])


def _class_picker_update(classes: list[str], current: str | None = None) -> Any:
    value = current if current in classes else (classes[0] if classes else None)
    return gr.update(choices=classes, value=value)


def _degenerate(d: dict[str, Any]) -> bool:
    """A box the canvas sends while it is being drawn (mouse down, not yet dragged)."""
    try:
        return abs(float(d["xmax"]) - float(d["xmin"])) < 1 or \
            abs(float(d["ymax"]) - float(d["ymin"])) < 1
    except (KeyError, TypeError, ValueError):
        return False


def _boxes_from_dicts(svc: YoloService, name: str, items: list[dict[str, Any]],
                      skip_degenerate: bool = False, who: Any = ALL) -> list[Box]:
    """Annotator or API boxes (label name or cls index, pixel corners) to dataset boxes (a new
    label name becomes a new class: a change, so only in the owner's own dataset).
    `skip_degenerate`: drop zero-size boxes (the canvas sends one on every mouse-down)."""
    ds = svc.dataset(name, who, write=True)
    out = []
    for i, d in enumerate(items, 1):
        if not isinstance(d, dict):
            raise ValueError(f"box {i}: each box is an object with xmin, ymin, xmax, ymax and "
                             "label (or cls)")
        if skip_degenerate and _degenerate(d):
            continue
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


def _near(a: Box, b: Box, tol: float = 1.5) -> bool:
    return max(abs(a.x1 - b.x1), abs(a.y1 - b.y1), abs(a.x2 - b.x2), abs(a.y2 - b.y2)) <= tol


def _same(a: list[Box] | None, b: list[Box]) -> bool:
    """Equal within the annotator's whole-pixel rounding."""
    if a is None:
        return False
    return len(a) == len(b) and all(
        x.cls == y.cls and _near(x, y, 1.0) for x, y in zip(a, b, strict=False))


def assign_new_boxes(items: list[dict[str, Any]], boxes: list[Box], stored: list[Box],
                     current: int | None, fresh: tuple[Box, float] | None,
                     now: float) -> tuple[list[Box], tuple[Box, float] | None]:
    """Give boxes the user has just drawn the class picked for new boxes.

    `items` are the canvas' boxes (degenerate ones already dropped) and `boxes` the same as
    dataset boxes. A new box is one without a label, or the extra first box (the canvas puts a
    new box first) that matches no stored box. Right after sending a new box without a label,
    the canvas labels it with the last label used in its pop-up and sends it again: `fresh`
    remembers the box for exactly that one next event, whose label is then undone. Returns
    (boxes, fresh for the next event)."""
    if current is None:
        return boxes, None
    out = list(boxes)
    new_fresh = None
    for i, (d, b) in enumerate(zip(items, boxes, strict=True)):
        unlabelled = not d.get("label") and "cls" not in d
        extra = (i == 0 and len(boxes) == len(stored) + 1
                 and not any(_near(b, s) for s in stored))
        echo = (fresh is not None and now - fresh[1] <= _FRESH_SECONDS
                and _near(b, fresh[0]) and b.cls != fresh[0].cls)
        if unlabelled or extra:
            out[i] = Box(current, b.x1, b.y1, b.x2, b.y2)
            if unlabelled:  # the canvas' relabel of it is still to come
                new_fresh = (out[i], now)
        elif echo:
            out[i] = Box(fresh[0].cls, b.x1, b.y1, b.x2, b.y2)
    return out, new_fresh


def merge_proposals(existing: list[Box], proposed: list[Box], iou: float = 0.5) -> list[Box]:
    """Pre-label proposals that add to the user's boxes: every existing box is kept as it is;
    a proposal that overlaps an existing box of the same class (IoU >= `iou`) is dropped."""
    def overlap(a: Box, b: Box) -> float:
        ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
        iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
        inter = ix * iy
        union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
        return inter / union if union > 0 else 0.0

    return [p for p in proposed
            if not any(e.cls == p.cls and overlap(e, p) >= iou for e in existing)]


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
        dataset = gr.Dropdown(label="Dataset", choices=svc.dataset_names(None), value=None,
                              scale=3,
                              allow_custom_value=True)
        new_name = gr.Textbox(label="New dataset name", placeholder="e.g. parcels", scale=2)
        create = gr.Button("Create", scale=1)
        starter = gr.Button(f"Starter dataset ({STARTER_NAME})", scale=1)
    starter_md = gr.Markdown(visible=False)
    with gr.Row():
        classes = gr.Textbox(label="Classes (one per line or comma-separated; renaming or "
                             "reordering keeps every box's class)", lines=2, scale=4)
        save_classes = gr.Button("Save classes", scale=1)
    classes_msg = gr.Markdown()
    with gr.Accordion("Add images or import a dataset", open=False):
        uploads = gr.File(label="Images, a zip of images, or a zip of a YOLO (data.yaml) or "
                          "COCO (*.json) dataset", file_count="multiple",
                          file_types=["image", ".zip"], elem_id="yolo-uploads")
        add = gr.Button("Add to dataset")
        report = gr.Markdown()
    with gr.Row():
        prev_btn = gr.Button("◀ Prev (a)", elem_id="yolo-prev", scale=1)
        image = gr.Dropdown(label="Image", choices=[], scale=4, allow_custom_value=True)
        next_btn = gr.Button("Next (d) ▶", elem_id="yolo-next", scale=1)
        only_todo = gr.Checkbox(label="Only unlabelled", scale=1)
    counts = gr.Markdown("No dataset selected.")
    with gr.Row():
        current = gr.Radio(label="Class for new boxes (keys 1-9)", choices=[], value=None,
                           elem_id="yolo-class", scale=3)
        legend = gr.HTML(legend_html([]), elem_id="yolo-legend")
    annot = image_annotator(label="Draw boxes: drag to draw (they get the class picked above), "
                            "click a box to move, resize or change its class; every edit is "
                            "saved at once", image_type="filepath", sources=[],
                            use_default_label=True, show_clear_button=False,
                            show_remove_button=True, height=520, elem_id="yolo-annot")
    with gr.Row():
        background = gr.Button("Mark: no objects")
        clear = gr.Button("Mark unlabelled")
        pre_model = gr.Dropdown(label="Pre-label with model", choices=svc.model_choices(None),
                                scale=2, allow_custom_value=True)
        pre_conf = gr.Slider(0.05, 0.95, value=0.25, step=0.05, label="Confidence")
        pre_btn = gr.Button("Pre-label")
    proposal_md = gr.Markdown(visible=False)
    with gr.Row():
        accept = gr.Button("Accept proposals", variant="primary", visible=False)
        discard = gr.Button("Discard proposals", visible=False)
    with gr.Row():
        val_frac = gr.Slider(0.05, 0.5, value=0.2, step=0.05, label="Validation fraction")
        split_btn = gr.Button("Split train/val")
        export_btn = gr.Button("Export YOLO zip")
    split_md = gr.Markdown()
    export_file = gr.File(label="Dataset zip (yolo train data=data.yaml)", interactive=False)
    # Plain-JSON endpoints for scripts (gradio_client); hidden in the page.
    api_boxes = gr.JSON(visible=False)
    api_in = gr.Textbox(visible=False)
    pending = gr.State(None)  # (dataset, image) while pre-label proposals await Accept
    fresh = gr.State(None)  # the box just drawn (see assign_new_boxes)
    owner = owner_state()  # the last input of every handler: datasets are per owner
    fill_on_load(dataset, svc.dataset_names, owned=True)
    fill_on_load(pre_model, svc.model_choices, owned=True)

    def class_parts(name: str | None, who: str | None, cur: str | None = None):
        cls = svc.dataset(name, who).classes if name else []
        return "\n".join(cls), _class_picker_update(cls, cur), legend_html(cls)

    no_proposals = (None, gr.update(visible=False), gr.update(visible=False),
                    gr.update(visible=False))

    @_err
    def create_dataset(name: str, class_text: str,
                       secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        ds = svc.create_dataset((name or "").strip(), _classes_from_text(class_text), who)
        return gr.update(choices=svc.dataset_names(who), value=ds.name), ""

    @_err
    def make_starter(secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        ds, note = svc.starter_dataset(who)
        return gr.update(choices=svc.dataset_names(who), value=ds.name), gr.update(value=note,
                                                                              visible=True)

    @_err
    def select_dataset(name: str | None, only: bool, cur: str | None,
                       secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        if not name:
            return ("", gr.update(choices=[], value=None), "No dataset selected.",
                    gr.update(choices=[], value=None), legend_html([]))
        ds = svc.dataset(name, who)
        names = ds.images(only_unlabelled=only)
        text, picker, leg = class_parts(name, who, cur)
        return (text, gr.update(choices=names, value=names[0] if names else None),
                _counts_md(svc, name, who), picker, leg)

    @_err
    def set_classes(name: str, class_text: str, img: str | None = None,
                    cur: str | None = None, secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        ds = svc.dataset(name, who, write=True)
        names = ds.set_classes(_classes_from_text(class_text))
        text, picker, leg = class_parts(name, who, cur)
        canvas = _annot_update(svc, name, img, who=who) if img else gr.skip()
        return (f"Saved classes: {', '.join(names) or '(none)'}. Boxes keep their classes.",
                text, picker, leg, canvas)

    @_err
    def add_files(name: str, files: list[Any] | None, only: bool, cur: str | None = None,
                  secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        if not files:
            raise gr.Error("Choose some files first.")
        ds = svc.dataset(name, who, write=True)
        rep = ds.add_files([Path(getattr(f, "name", f)) for f in files], svc.work_dir)
        names = ds.images(only_unlabelled=only)
        text, picker, leg = class_parts(name, who, cur)
        return (rep.summary(), text, gr.update(choices=names, value=names[0] if names else None),
                _counts_md(svc, name, who), picker, leg)

    @_err
    def show_image(name: str | None, img: str | None,
                   secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        if not name or not img:
            return (gr.update(value=None), _counts_md(svc, name, who), *no_proposals)
        return (_annot_update(svc, name, img, who=who), _counts_md(svc, name, who), *no_proposals)

    def step(delta: int):
        @_err
        def go(name: str | None, img: str | None, only: bool,
               secret: str | None = None, request: gr.Request = None):
            if not name:
                raise gr.Error("Pick a dataset first.")
            names = svc.dataset(name, owner_of(secret, request)).images(only_unlabelled=only)
            if not names:
                return gr.update(choices=[], value=None)
            i = names.index(img) + delta if img in names else 0
            return gr.update(choices=names, value=names[max(0, min(len(names) - 1, i))])
        return go

    @_err
    def save_from_annotator(name: str | None, img: str | None, value: dict | None,
                            cur: str | None, pend: Any, fresh_: Any,
secret: str | None = None, request: gr.Request = None):
        """Save what the canvas shows (new boxes get the picked class), unless it is what we
        just loaded (its change event also fires when we set the value) or pre-label proposals
        are waiting for Accept. Outputs: counts, canvas, classes text, picker, legend, fresh."""
        who = owner_of(secret, request)
        skip = (gr.skip(),) * 6
        if not name or not img or not value or not value.get("image"):
            return skip
        ds = svc.dataset(name, who, write=True)
        before = ds.classes
        items = [d for d in (value.get("boxes") or []) if not _degenerate(d)]
        boxes = _boxes_from_dicts(svc, name, items, who=who)
        stored = ds.boxes(img)
        cur_i = before.index(cur) if cur in before else (0 if before else None)
        fr = None
        if isinstance(fresh_, (list, tuple)) and len(fresh_) == 3 \
                and list(fresh_[0]) == [name, img]:
            fr = (Box(int(fresh_[1][0]), *map(float, fresh_[1][1:])), float(fresh_[2]))
        boxes, fr = assign_new_boxes(items, boxes, stored or [], cur_i, fr, time.time())
        fresh_out = [[name, img], [fr[0].cls, fr[0].x1, fr[0].y1, fr[0].x2, fr[0].y2], fr[1]] \
            if fr else None
        shown = _boxes_from_dicts(svc, name, items, who=who) if items else []
        canvas = gr.skip() if _same(shown, boxes) and ds.classes == before \
            else _annot_update(svc, name, img, boxes, who=who)
        after = ds.classes
        cls_out = class_parts(name, who, cur) if after != before else (gr.skip(),) * 3
        if pend and tuple(pend) == (name, img):  # proposals on screen: saved on Accept only
            return (gr.skip(), canvas, *cls_out, fresh_out)
        if (stored is None and not boxes) or _same(stored, boxes):
            return (gr.skip(), canvas, *cls_out, fresh_out)
        ds.set_boxes(img, boxes)
        return (_counts_md(svc, name, who), canvas, *cls_out, fresh_out)

    @_err
    def mark(name: str, img: str, background_: bool, who: str | None):
        ds = svc.dataset(name, who, write=True)
        if not img:
            raise gr.Error("Pick an image first.")
        ds.set_boxes(img, []) if background_ else ds.clear_labels(img)
        return (_annot_update(svc, name, img, who=who), _counts_md(svc, name, who), *no_proposals)

    @_err
    def do_prelabel(name: str, img: str, model_path: str | None, conf: float,
                    secret: str | None = None, request: gr.Request = None):
        """Model suggestions as proposals next to the user's boxes: nothing is saved until
        Accept, and no box of the user's is ever removed."""
        if not name or not img:
            gr.Warning("Pick a dataset and an image first.")
            return (gr.skip(),) * 5
        if not model_path:
            gr.Warning("Pre-label needs a model: train one (Train tab), then pick it here.")
            return (gr.skip(),) * 5
        who = owner_of(secret, request)
        ds = svc.dataset(name, who)
        key = svc.model_key(model_path, owner=who)
        from PIL import Image

        rgb = Image.open(ds.image_path(img)).convert("RGB")
        import numpy as np

        with svc.studio.models.use(key) as model:
            suggested = prelabel(model, np.asarray(rgb), ds.classes, conf=float(conf),
                                 device=svc.studio.device)
        mine = ds.boxes(img) or []
        new = merge_proposals(mine, suggested)
        if not new:
            msg = (f"The model proposed no new boxes at confidence {float(conf):.2f}; your "
                   f"{len(mine)} box(es) are unchanged.")
            gr.Info(msg)
            return (gr.skip(), None, gr.update(value=msg, visible=True),
                    gr.update(visible=False), gr.update(visible=False))
        msg = (f"**{len(new)} proposed box(es)** added to your {len(mine)} (nothing saved yet): "
               "fix or delete them on the canvas, then **Accept**; **Discard** restores your "
               "boxes.")
        return (_annot_update(svc, name, img, mine + new, who=who), [name, img],
                gr.update(value=msg, visible=True), gr.update(visible=True),
                gr.update(visible=True))

    @_err
    def accept_proposals(name: str, img: str, value: dict | None, pend: Any,
                         secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        if not pend or tuple(pend) != (name, img) or not value:
            gr.Info("No proposals to accept on this image.")
            return (gr.skip(), gr.skip(), *no_proposals)
        ds = svc.dataset(name, who, write=True)
        items = [d for d in (value.get("boxes") or []) if not _degenerate(d)]
        n = ds.set_boxes(img, _boxes_from_dicts(svc, name, items, who=who))
        gr.Info(f"Saved {n} box(es).")
        return (_annot_update(svc, name, img, who=who), _counts_md(svc, name, who), *no_proposals)

    @_err
    def discard_proposals(name: str, img: str,
                          secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        return (_annot_update(svc, name, img, who=who) if name and img else gr.skip(),
                _counts_md(svc, name, who), *no_proposals)

    @_err
    def split(name: str, frac: float, secret: str | None = None, request: gr.Request = None):
        s = svc.dataset(name, owner_of(secret, request), write=True).split(float(frac))
        return f"Split: {s['train']} train, {s['val']} val (labelled images)."

    @_err
    def export_zip(name: str, secret: str | None = None, request: gr.Request = None):
        ds = svc.dataset(name, owner_of(secret, request))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(svc.studio.settings.exports_dir) / f"{ds.name}-yolo-{stamp}.zip"
        return str(ds.export_zip(out))

    # --- script API (JSON in and out) ---
    @_err
    def api_images(name: str, only: bool, secret: str | None = None, request: gr.Request = None):
        ds = svc.dataset(name, owner_of(secret, request))
        done, total = ds.counts()
        return {"images": ds.images(only_unlabelled=bool(only)), "labelled": done,
                "total": total, "classes": ds.classes}

    @_err
    def api_get_boxes(name: str, img: str, secret: str | None = None, request: gr.Request = None):
        ds = svc.dataset(name, owner_of(secret, request))
        boxes = ds.boxes(img)
        return {"image": img, "labelled": boxes is not None,
                "boxes": [b.as_dict(ds.classes) for b in boxes or []]}

    @_err
    def api_set_boxes(name: str, img: str, boxes_json: str,
                      secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        try:
            items = json.loads(boxes_json or "[]")
        except json.JSONDecodeError as e:
            raise gr.Error(f"boxes must be a JSON list: {e}") from None
        if not isinstance(items, list):
            raise gr.Error("boxes must be a JSON list of {xmin, ymin, xmax, ymax, label|cls}")
        n = svc.dataset(name, who, write=True).set_boxes(
            img, _boxes_from_dicts(svc, name, items, who=who))
        return api_get_boxes(name, img, secret, request) | {"saved": n}

    proposal_outs = [pending, proposal_md, accept, discard]
    create.click(create_dataset, [new_name, classes, owner], [dataset, new_name],
                 api_name="yolo_create_dataset")
    starter.click(make_starter, [owner], [dataset, starter_md], api_name="yolo_starter_dataset")
    sel_outs = [classes, image, counts, current, legend]
    dataset.change(select_dataset, [dataset, only_todo, current, owner], sel_outs,
                   api_visibility="private")
    only_todo.change(select_dataset, [dataset, only_todo, current, owner], sel_outs,
                     api_visibility="private")
    save_classes.click(set_classes, [dataset, classes, image, current, owner],
                       [classes_msg, classes, current, legend, annot],
                       api_name="yolo_set_classes")
    add.click(add_files, [dataset, uploads, only_todo, current, owner],
              [report, classes, image, counts, current, legend], api_name="yolo_add_files")
    image.change(show_image, [dataset, image, owner], [annot, counts, *proposal_outs],
                 api_visibility="private")
    prev_btn.click(step(-1), [dataset, image, only_todo, owner], [image], api_visibility="private")
    next_btn.click(step(+1), [dataset, image, only_todo, owner], [image], api_visibility="private")
    annot.change(save_from_annotator, [dataset, image, annot, current, pending, fresh, owner],
                 [counts, annot, classes, current, legend, fresh],
                 api_visibility="private", show_progress="hidden")
    def mark_background(n: str, i: str, secret: str | None = None, request: gr.Request = None):
        return mark(n, i, True, owner_of(secret, request))

    def mark_unlabelled(n: str, i: str, secret: str | None = None, request: gr.Request = None):
        return mark(n, i, False, owner_of(secret, request))

    def models_now(secret: str | None = None, request: gr.Request = None):
        return gr.update(choices=svc.model_choices(owner_of(secret, request)))

    background.click(mark_background, [dataset, image, owner],
                     [annot, counts, *proposal_outs], api_visibility="private")
    clear.click(mark_unlabelled, [dataset, image, owner],
                [annot, counts, *proposal_outs], api_visibility="private")
    pre_model.focus(models_now, [owner], outputs=[pre_model], api_visibility="private",
                    queue=False)
    pre_btn.click(do_prelabel, [dataset, image, pre_model, pre_conf, owner],
                  [annot, *proposal_outs], api_name="yolo_prelabel", concurrency_id="gpu")
    accept.click(accept_proposals, [dataset, image, annot, pending, owner],
                 [annot, counts, *proposal_outs], api_name="yolo_accept_proposals")
    discard.click(discard_proposals, [dataset, image, owner],
                  [annot, counts, *proposal_outs],
                  api_name="yolo_discard_proposals")
    split_btn.click(split, [dataset, val_frac, owner], [split_md], api_name="yolo_split")
    export_btn.click(export_zip, [dataset, owner], [export_file], api_name="yolo_export_dataset")
    hidden = gr.Button(visible=False)
    hidden.click(api_images, [dataset, only_todo, owner], [api_boxes], api_name="yolo_images")
    gr.Button(visible=False).click(api_get_boxes, [dataset, image, owner], [api_boxes],
                                   api_name="yolo_get_boxes")
    gr.Button(visible=False).click(api_set_boxes, [dataset, image, api_in, owner], [api_boxes],
                                   api_name="yolo_set_boxes")


# ----- Train ------------------------------------------------------------------------------------
def _train_tab(studio: Any, svc: YoloService, job_panel: Any) -> None:
    from studio.ui import views

    meta = {name: f.metadata for name, f in TrainConfig.__dataclass_fields__.items()}
    d = TrainConfig()
    default_model = studio.choices["yolo"].source if "yolo" in studio.choices else d.model
    with gr.Row():
        dataset = gr.Dropdown(label="Dataset", choices=svc.dataset_names(None), scale=2,
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
    with gr.Row():
        start = gr.Button("Start training", variant="primary", scale=3)
        starter_fill = gr.Button(f"Settings for the {STARTER_NAME} set", scale=1)
    gr.Markdown(SCRATCH_NOTE)
    # Losses and accuracy have different scales: one plot each (the panel's plot has the
    # losses, the accuracy plot below follows the same run).
    panel = job_panel(studio, kind="yolo", plot_keys=("box_loss", "cls_loss", "dfl_loss"))
    acc_plot = gr.LinePlot(x="step", y="value", color="series", title="Accuracy (val)",
                           height=220, label="mAP per epoch", y_lim=[0, 1])
    acc_timer = gr.Timer(2.0)
    with gr.Accordion("Results: metrics table and plots", open=False):
        show = gr.Button("Show results of the selected run")
        table = gr.Dataframe(label="Per-epoch metrics", interactive=False)
        gallery = gr.Gallery(label="PR curve, confusion matrix, sample predictions", columns=3,
                             height=420)

    owner = owner_state()

    @_err
    def start_training(ds, model_, ep, sz, b, pat, sd, amp_, mos, flip, hsv_, trust_=False,
                       secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        _c = TrainConfig.coerce  # a bad number names its field
        cfg = TrainConfig(model=(model_ or "").strip() or d.model, epochs=_c("epochs", ep),
                          imgsz=_c("imgsz", sz), batch=_c("batch", b or 0),
                          patience=_c("patience", pat), seed=_c("seed", sd), amp=bool(amp_),
                          mosaic=_c("mosaic", mos), fliplr=_c("fliplr", flip), hsv=bool(hsv_),
                          data="pending")
        run_id = svc.start_training(ds, cfg, trust_model=bool(trust_), owner=who)
        return panel.select(run_id, studio, who)

    @_err
    def results(run_id: str | None, secret: str | None = None, request: gr.Request = None):
        if not run_id:
            raise gr.Error("Pick a run above.")
        headers, rows, images = svc.run_results(run_id, owner_of(secret, request))
        import pandas as pd

        return pd.DataFrame(rows, columns=headers) if headers else None, images

    def accuracy(run_id: str | None, secret: str | None = None, request: gr.Request = None):
        if not run_id:
            return None
        try:
            v = studio.jobs.view(run_id, owner=owner_of(secret, request))
        except KeyError:
            return None
        return views.metrics_frame(v, ("mAP50", "mAP50_95"))

    def fill_starter(secret: str | None = None, request: gr.Request = None):
        r = STARTER_RECIPE
        names = svc.dataset_names(owner_of(secret, request))
        return (gr.update(choices=names, value=STARTER_NAME) if STARTER_NAME in names
                else gr.skip(), r["model"], r["epochs"], r["imgsz"], r["batch"])

    def datasets_now(secret: str | None = None, request: gr.Request = None):
        return gr.update(choices=svc.dataset_names(owner_of(secret, request)))

    fill_on_load(dataset, svc.dataset_names, owned=True)
    starter_fill.click(fill_starter, [owner], [dataset, model, epochs, imgsz, batch],
                       api_visibility="private")
    panel.run_picker.change(accuracy, [panel.run_picker, owner], [acc_plot],
                            api_visibility="private", show_progress="hidden")
    acc_timer.tick(accuracy, [panel.run_picker, owner], [acc_plot], api_visibility="private",
                   show_progress="hidden", queue=False)
    dataset.focus(datasets_now, [owner], outputs=[dataset], api_visibility="private",
                  queue=False)
    start.click(start_training, [dataset, model, epochs, imgsz, batch, patience, seed, amp,
                                 mosaic, fliplr, hsv, trust_model, owner], [panel.run_picker],
                api_name="yolo_train")
    show.click(results, [panel.run_picker, owner], [table, gallery], api_name="yolo_results")


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
    files = gr.File(label="Download: trained weights (.pt) and exports (.onnx)",
                    file_count="multiple", interactive=False)

    owner = owner_state()

    def run_choices(who: str | None):
        # no status in the label: it would go stale in the dropdown (and only runs that have
        # trained weights are listed, i.e. finished ones); the caller's own runs only (a
        # shared one is read-only: its folder takes no exports)
        return [(v.title + f" · {v.id}", v.id) for v in svc.runs(who)
                if who and v.owner == who and any(a["kind"] == "model" for a in v.artifacts)]

    @_err
    def export(run_id: str | None, secret: str | None = None, request: gr.Request = None,
               progress=gr.Progress()):  # noqa: B008
        if not run_id:
            raise gr.Error("Pick a finished run.")
        rows, note = svc.export_and_benchmark(run_id, progress=progress,
                                              owner=owner_of(secret, request))
        return table_rows(rows), "\n".join(f"- {n}" for n in note), [r.file for r in rows]

    def runs_now(secret: str | None = None, request: gr.Request = None):
        return gr.update(choices=run_choices(owner_of(secret, request)))

    fill_on_load(run, run_choices, owned=True)
    run.focus(runs_now, [owner], outputs=[run], api_visibility="private", queue=False)
    go.click(export, [run, owner], [table, notes, files], api_name="yolo_export",
             concurrency_id="gpu")


# ----- Detect -----------------------------------------------------------------------------------
def _detect_tab(studio: Any, svc: YoloService) -> None:
    with gr.Row():
        model = gr.Dropdown(label="Model (trained here)", choices=svc.model_choices(None),
                            scale=3, allow_custom_value=True)
        upload = gr.File(label="…or upload a model (.onnx, or .pt if you trust it)",
                         file_types=[".onnx", ".pt"], scale=2)
        trust = gr.Checkbox(label="I trust this file (a .pt is a pickle and can run code)",
                            value=False)
    with gr.Row():
        conf = gr.Slider(0.01, 0.99, value=0.25, step=0.01, label="Confidence")
        iou = gr.Slider(0.05, 0.95, value=0.7, step=0.05, label="IoU (NMS)")
    with gr.Tab("Image"):
        with gr.Row():
            # Not streaming: a streaming Image never hands an upload or a paste to Detect.
            # Live webcam detection has its own tab below.
            inp = gr.Image(label="Image (upload, paste, or a webcam snapshot)",
                           sources=["upload", "clipboard", "webcam"], type="numpy",
                           elem_id="yolo-detect-input")
            out = gr.Image(label="Detections (download with the button)", format="png",
                           elem_id="yolo-detect-output")
        go = gr.Button("Detect", variant="primary")
        pictures = assets_in("yolo", ".png")
        if pictures:
            gr.Examples([[p] for p in pictures], inputs=[inp], cache_examples=False,
                        label="Example pictures (circles and squares, like the starter set)",
                        elem_id="yolo-examples")
        rows = gr.Dataframe(headers=ROW_HEADERS, label="Boxes", interactive=False)
    with gr.Tab("Webcam (live)"):
        with gr.Row():
            cam = gr.Image(label="Webcam", sources=["webcam"], type="numpy", streaming=True)
            cam_out = gr.Image(label="Detections")
        cam_rows = gr.Dataframe(headers=ROW_HEADERS, label="Boxes", interactive=False)
    with gr.Tab("Video file"):
        vin = gr.Video(label="Video", sources=["upload"])
        vgo = gr.Button("Detect in video", variant="primary")
        vout = gr.Video(label="Annotated video")

    owner = owner_state()

    def resolve(model_path: str | None, up: Any, trusted: bool, who: str | None) -> str:
        if up is not None:
            path = Path(getattr(up, "name", up))
            return svc.model_key(path, trust_pickle=bool(trusted), owner=who)
        if not model_path:
            raise gr.Error("Pick a trained model or upload one.")
        return svc.model_key(model_path, owner=who)  # another session's weights: refused

    @_err
    def run_image(image, model_path, up, trusted, c, i,
                  secret: str | None = None, request: gr.Request = None):
        if image is None:
            raise gr.Error("Add an image (upload, webcam or paste).")
        key = resolve(model_path, up, trusted, owner_of(secret, request))
        with studio.models.use(key) as m:
            annotated, dets = detect_image(m, image, float(c), float(i), device=studio.device)
        return annotated, [d.row() for d in dets]

    @_err
    def run_video(video, model_path, up, trusted, c, i,
                  secret: str | None = None, request: gr.Request = None,
                  progress=gr.Progress()):  # noqa: B008
        if not video:
            raise gr.Error("Upload a video file.")
        key = resolve(model_path, up, trusted, owner_of(secret, request))
        out_path = Path(tempfile.mkdtemp(dir=svc.work_dir)) / "detections.mp4"
        with studio.models.use(key) as m:
            path, _ = detect_video(m, Path(video), out_path, float(c), float(i),
                                   device=studio.device, progress=progress)
        return str(path)

    def models_now(secret: str | None = None, request: gr.Request = None):
        return gr.update(choices=svc.model_choices(owner_of(secret, request)))

    fill_on_load(model, svc.model_choices, owned=True)
    model.focus(models_now, [owner], outputs=[model], api_visibility="private", queue=False)
    go.click(run_image, [inp, model, upload, trust, conf, iou, owner], [out, rows],
             api_name="yolo_detect", concurrency_id="gpu")
    cam.stream(run_image, [cam, model, upload, trust, conf, iou, owner], [cam_out, cam_rows],
               api_visibility="private", concurrency_id="gpu", stream_every=0.5)
    vgo.click(run_video, [vin, model, upload, trust, conf, iou, owner], [vout],
              api_name="yolo_detect_video", concurrency_id="gpu")
