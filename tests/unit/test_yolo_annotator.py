"""The gradio_image_annotation component with our label store (Gradio 6, server side)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tabs.yolo.formats import Box
from tabs.yolo.service import YoloService


class _FakeStudio:
    def __init__(self, home):
        from studio.config import Settings

        self.settings = Settings(home=home)
        self.extras = {}


def test_annotator_round_trip_keeps_boxes_and_does_not_mark_unlabelled(tmp_path):
    from gradio_image_annotation import image_annotator
    from gradio_image_annotation.image_annotator import AnnotatedImageData

    from tabs.yolo import ui

    svc = YoloService(_FakeStudio(tmp_path))
    ds = svc.store.create("d", classes=["a", "b"])
    p = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(p)
    ds.add_image(p)
    comp = image_annotator(label_list=ds.classes, image_type="filepath", sources=[])

    # An unlabelled image shown in the annotator, sent back unchanged: stays unlabelled.
    shown = comp.postprocess(ui._annot_value(svc, "d", "x.png"))
    back = comp.preprocess(AnnotatedImageData(**shown.model_dump()))
    assert back["boxes"] == [] and ds.boxes("x.png") is None

    # A drawn box comes back in pixels with its class name and is saved as YOLO.
    ds.set_boxes("x.png", [Box(1, 5, 6, 30, 33)])
    shown = comp.postprocess(ui._annot_value(svc, "d", "x.png"))
    payload = shown.model_dump()
    payload["boxes"][0]["xmax"] = 40  # the user drags the right edge
    back = comp.preprocess(AnnotatedImageData(**payload))
    boxes = ui._boxes_from_dicts(svc, "d", back["boxes"])
    assert boxes == [Box(1, 5, 6, 40, 33)]
    assert not ui._same(ds.boxes("x.png"), boxes)
