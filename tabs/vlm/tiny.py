"""Tiny random vision-language models of the real architectures (LLaVA, Qwen2-VL), with locally
made tokenizers, image processors and chat templates, saved as ordinary model folders that
`AutoModelForImageTextToText` and `AutoProcessor` load: for tests, the bench's ``--tiny`` smoke
run and trying the tab with no weights at all."""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl")

# The real templates' shape, trimmed: images come as {"type": "image"} content parts.
QWEN2VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ c['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

_TEXT = ["Describe the image. A red square on a blue background, two circles.",
         "What is written here? Count the objects. Where is the cat? boxes bbox_2d label",
         '[{"bbox_2d": [10, 20, 110, 220], "label": "cat"}] USER ASSISTANT image picture']


def tokenizer_for(family: str):
    """The Qwen2.5 chat tokenizer of `studio.llm.testing` plus the family's picture tokens."""
    from studio.llm.testing import build_tokenizer

    tok = build_tokenizer("qwen2.5", extra_text=_TEXT, vocab_size=600)
    if family == "llava":
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    else:
        tok.add_special_tokens({"additional_special_tokens": [
            "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    return tok


def make_processor(family: str, tok, image_size: int = 56, min_pixels: int = 28 * 28 * 4,
                   max_pixels: int = 28 * 28 * 16):
    """A processor of the family's real classes around `tok` (LLaVA: CLIP preprocessing at
    `image_size`; Qwen2-VL: dynamic resolution between `min_pixels` and `max_pixels`)."""
    if family == "llava":
        from transformers import CLIPImageProcessor, LlavaProcessor

        image_proc = CLIPImageProcessor(size={"shortest_edge": image_size},
                                        crop_size={"height": image_size, "width": image_size})
        return LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=14,
                              vision_feature_select_strategy="default",
                              chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    kw = dict(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2,
              temporal_patch_size=2)
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tok,
                            video_processor=Qwen2VLVideoProcessor(**kw),
                            chat_template=QWEN2VL_TEMPLATE)


def special_ids(tok, family: str) -> dict[str, int]:
    """The config fields that name the processor's picture tokens, for a model config."""
    get = tok.convert_tokens_to_ids
    if family == "llava":
        return {"image_token_id": get("<image>")}  # Qwen2-VL and Qwen2.5-VL share the rest
    return {"image_token_id": get("<|image_pad|>"), "video_token_id": get("<|video_pad|>"),
            "vision_start_token_id": get("<|vision_start|>"),
            "vision_end_token_id": get("<|vision_end|>")}


def tiny_vlm(family: str, hidden: int = 64, layers: int = 2, seed: int = 0,
             image_size: int = 56):
    """(model, processor) of `family` with random weights; image tokens stay few (16 or so)."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    tok = tokenizer_for(family)
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, bos_token_id=None, tie_word_embeddings=False)
    if family == "llava":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
        from transformers import LlavaForConditionalGeneration as Model

        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=image_size, patch_size=14,
                                  projection_dim=32)
        cfg = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**text),
                          vision_feature_layer=-2, vision_feature_select_strategy="default",
                          projector_hidden_act="gelu", tie_word_embeddings=False,
                          **special_ids(tok, family))
    else:
        half = hidden // 4 // 2  # rotary pairs per head (4 heads)
        t = half // 4  # M-RoPE's temporal / height / width split, in the real models' ratio
        rope = {"rope_type": "default", "rope_theta": 1000000.0,
                "mrope_section": [t, (half - t) // 2, half - t - (half - t) // 2]}
        common = dict(text_config={**text, "rope_parameters": rope}, tie_word_embeddings=False,
                      **special_ids(tok, family))
        if family == "qwen2-vl":
            from transformers import Qwen2VLConfig
            from transformers import Qwen2VLForConditionalGeneration as Model

            cfg = Qwen2VLConfig(vision_config={
                "depth": 2, "embed_dim": 32, "hidden_size": hidden, "num_heads": 2,
                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}, **common)
        else:  # Qwen2.5-VL: windowed vision attention, SwiGLU vision MLP
            from transformers import Qwen2_5_VLConfig
            from transformers import Qwen2_5_VLForConditionalGeneration as Model

            cfg = Qwen2_5_VLConfig(vision_config={
                "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "out_hidden_size": hidden, "patch_size": 14, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [1]},
                **common)
    model = Model(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), make_processor(family, tok, image_size)


def make_tiny_vlm(folder: str | Path, family: str = "qwen2-vl", seed: int = 0, **kw) -> Path:
    """Save a tiny VLM (weights, config, processor) to `folder`; returns the folder."""
    folder = Path(folder)
    model, proc = tiny_vlm(family, seed=seed, **kw)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def make_example_pictures(folder: str | Path) -> list[Path]:
    """The tab's example pictures (assets/vlm), drawn here so they are reproducible and free to
    ship: shapes to count and locate, a sign to read, two rooms to compare."""
    from PIL import Image, ImageDraw, ImageFont

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=44)
    small = ImageFont.load_default(size=24)
    out = []

    im = Image.new("RGB", (640, 420), (235, 240, 245))
    d = ImageDraw.Draw(im)
    for x, y in ((90, 90), (300, 240), (550, 120)):
        d.ellipse([x - 55, y - 55, x + 55, y + 55], fill=(220, 40, 40))
    for x, y in ((150, 300), (390, 90)):
        d.rectangle([x - 50, y - 50, x + 50, y + 50], fill=(40, 80, 210))
    d.polygon([(560, 390), (620, 280), (500, 280)], fill=(30, 160, 70))
    out.append(folder / "shapes.png")
    im.save(out[-1])

    im = Image.new("RGB", (640, 360), (250, 250, 240))
    d = ImageDraw.Draw(im)
    d.rectangle([40, 40, 600, 320], outline=(20, 20, 20), width=6)
    d.text((320, 120), "BAKERY OPEN", font=font, fill=(150, 30, 30), anchor="mm")
    d.text((320, 200), "Mon-Sat 7:00 - 18:30", font=small, fill=(20, 20, 20), anchor="mm")
    d.text((320, 250), "Fresh bread daily", font=small, fill=(20, 20, 20), anchor="mm")
    out.append(folder / "sign.png")
    im.save(out[-1])

    for name, lamp in (("room_a.png", True), ("room_b.png", False)):
        im = Image.new("RGB", (640, 420), (210, 190, 160))
        d = ImageDraw.Draw(im)
        d.rectangle([0, 300, 640, 420], fill=(120, 80, 50))  # floor
        d.rectangle([60, 200, 300, 310], fill=(60, 90, 140))  # sofa
        d.rectangle([420, 60, 580, 180], fill=(240, 240, 255), outline=(80, 60, 40), width=8)
        d.rectangle([360, 240, 480, 310], fill=(90, 60, 30))  # table
        if lamp:
            d.polygon([(520, 170), (600, 170), (580, 120), (540, 120)], fill=(250, 220, 80))
            d.line([(560, 170), (560, 300)], fill=(40, 40, 40), width=6)
        else:
            d.ellipse([380, 200, 420, 240], fill=(30, 140, 60))  # a plant instead
        out.append(folder / name)
        im.save(out[-1])
    return out


COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 210), "green": (30, 160, 70),
           "yellow": (240, 200, 40)}


def make_pairs_zip(path: str | Path, n: int = 8, shape: str = "jsonl", seed: int = 0) -> Path:
    """A small adapt dataset: pictures of one coloured square each, captioned with its colour,
    as a zip with a ShareGPT-style JSONL (``<image>`` markers, ``images`` list) or a CSV."""
    import io
    import json
    import random
    import zipfile

    from PIL import Image

    rng = random.Random(seed)
    names = list(COLOURS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            colour = names[i % len(names)]
            im = Image.new("RGB", (64, 48), (245, 245, 245))
            x, y = rng.randint(0, 30), rng.randint(0, 14)
            im.paste(COLOURS[colour], (x, y, x + 30, y + 30))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            zf.writestr(f"images/{i:03d}.png", buf.getvalue())
            rows.append((f"images/{i:03d}.png", f"A {colour} square."))
        if shape == "csv":
            zf.writestr("pairs.csv", "image,caption\n" + "".join(f"{a},{b}\n" for a, b in rows))
        else:
            lines = [json.dumps({"messages": [
                {"role": "user", "content": "<image>What colour is the square?"},
                {"role": "assistant", "content": b}], "images": [a]}) for a, b in rows]
            zf.writestr("pairs.jsonl", "\n".join(lines) + "\n")
    return path
