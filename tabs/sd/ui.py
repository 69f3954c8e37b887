"""The Stable Diffusion tab: Train (dataset, settings, "will it fit?", job panel, samples) and
Generate (SD 1.5 / SDXL, LoRAs with strengths, Stop). Widgets in, logic calls, gr.Error out."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import gradio as gr

from studio.sessions import owner_of, session_of
from studio.ui.examples import prompts
from studio.ui.widgets import fill_on_load, job_panel, on_page_load, owner_state
from tabs.sd import service
from tabs.sd.config import LR_SCHEDULES, SDTrainConfig
from tabs.sd.dataset import load_dataset
from tabs.sd.generate import SCHEDULERS, GenerateRequest, LoraChoice, generate

LORA_SLOTS = 3  # do_generate names each slot
_META = {f.name: f.metadata for f in fields(SDTrainConfig)}
_DEFAULTS = SDTrainConfig()


def _label(name: str) -> str:
    return _META[name].get("label", name)


def _info(name: str) -> str | None:
    return _META[name].get("help") or None


def _default(name: str) -> Any:
    return getattr(_DEFAULTS, name)


def build_ui(studio: Any) -> None:
    with gr.Tabs():
        with gr.Tab("Train"):
            train = _train_tab(studio)
        with gr.Tab("Generate"):
            gen = _generate_tab(studio)
    _wire_demo(studio, train, gen)


def _base_dropdown(studio: Any, arch: str, label: str, info: str | None) -> tuple[Any, Any]:
    """A base-model dropdown of what is on disk, and the note under it that says what is
    missing and how to get it (never an empty dropdown without a word); both refilled on
    every page load."""
    options = service.base_options(studio, arch)
    box = gr.Dropdown(options, value=options[0][1] if options else None,
                      allow_custom_value=True, label=label, info=info)
    note = gr.Markdown(service.base_note(studio, arch), elem_classes=["sd-base-note"])
    fill_on_load(box, lambda: service.base_options(studio, arch))
    on_page_load(lambda: service.base_note(studio, arch), outputs=[note])
    return box, note


def _wire_demo(studio: Any, train: dict[str, Any], gen: dict[str, Any]) -> None:
    """"Set up the CPU demo": the tiny random model and four generated images, with settings
    that train in minutes on a CPU, filled into both the Train and the Generate tab (the
    resolution slider stays: the job trains at the size the dataset was prepared at)."""

    def do_demo(secret: str | None = None, request: gr.Request = None):
        try:
            ds = service.demo_setup(studio, owner_of(secret, request))
        except Exception as e:  # building the tiny model needs diffusers: say what failed
            raise gr.Error(f"The CPU demo could not be set up: {type(e).__name__}: {e}") from None
        base = str(service.demo_dir(studio))
        sd15 = service.base_options(studio, "sd15")
        gr.Info("CPU demo ready: click Start training, then use the LoRA on the Generate tab.")
        return (str(ds.folder), ds.report().replace("\n", "  \n"), _preview(ds),
                _captions_frame(str(ds.folder)), gr.update(choices=sd15, value=base),
                service.base_note(studio, "sd15"), 30, 4, 4, 1e-3, "no", False, "off", 0,
                "a drawing of sks ball", "demo_lora", "sks",
                gr.update(value="sd15"), gr.update(choices=sd15, value=base),
                service.base_note(studio, "sd15"), "a drawing of sks ball", 4, 32, 32,
                "Euler", DEMO_NOTE)

    t, g = train, gen
    t["demo_btn"].click(
        do_demo, inputs=[owner_state()],
        outputs=[t["dataset_dir"], t["prep_report"], t["preview"], t["captions"], t["base"],
                 t["base_note"], t["steps"], t["rank"], t["alpha"], t["lr"],
                 t["precision"], t["adam8"], t["gc"], t["sample_every"], t["sample_prompts"],
                 t["name"], t["trigger"],
                 g["arch"], g["base"], g["base_note"], g["prompt"], g["steps"], g["width"],
                 g["height"], g["scheduler"], t["demo_md"]],
        api_name="sd_demo")


DEMO_NOTE = ("**CPU demo mode.** The base model is a tiny random-weight SD 1.5 (under 1 MB) "
             "and the dataset four generated 48 px pictures, prepared at 32 px: training takes "
             "minutes on a CPU and the images it draws are coloured noise. It shows the whole "
             "loop (prepare → train → LoRA → generate), not quality; for real pictures "
             "download SD 1.5 on the Models tab.")


def _captions_frame(folder: str | None) -> list[list[str]]:
    if not folder:
        return []
    ds = load_dataset(folder)
    return [[it.file_name, it.source, it.text, f"{it.width}x{it.height}"] for it in ds.items]


def _preview(ds: Any) -> list[tuple[str, str]]:
    """Gallery items; with buckets the caption starts with the image's bucket."""
    return [(str(ds.folder / it.file_name),
             f"[{it.width}x{it.height}] {it.text}" if ds.buckets else it.text)
            for it in ds.items]


def _train_tab(studio: Any) -> dict[str, Any]:
    gr.Markdown("Train a Stable Diffusion 1.5 LoRA on 20–150 images of your style or product. "
                "Training runs as a job: close the browser and come back.")
    with gr.Row():
        demo_btn = gr.Button("Set up the CPU demo", scale=1, size="sm")
        demo_md = gr.Markdown("No model yet, or no GPU? **CPU demo mode** fills in a tiny "
                              "random model and four pictures so you can try train → "
                              "generate in minutes (its images are noise).")
    with gr.Row():
        with gr.Column():
            gr.Markdown("### 1. Images and captions")
            files = gr.File(label="Images, .txt captions, a caption CSV, or a zip",
                            file_count="multiple", type="filepath")
            instance = gr.Textbox(label="Instance prompt (for images without a caption)",
                                  placeholder="a photo of sks backpack")
            size = gr.Slider(256, 1024, value=512, step=64, label=_label("resolution"))
            with gr.Row():
                crop = gr.Radio(["center", "smart"], value="center", label="Crop",
                                info="smart: keep the most detailed part of the image")
                buckets = gr.Checkbox(False, label="Aspect-ratio buckets",
                                      info="keep each image's shape (e.g. 576x448, 384x640 at "
                                      "512) instead of a square; batches come from one bucket")
            prep_btn = gr.Button("Prepare dataset")
            dataset_dir = gr.Textbox(label=_label("dataset_dir"),
                                     info="filled by Prepare; an earlier folder works too")
            prep_report = gr.Markdown()
            # contain, not cover: a bucketed image shows its own shape in the thumbnail
            preview = gr.Gallery(label="Prepared images", columns=6, height=240,
                                 object_fit="contain", elem_id="sd-preview")
            # only the caption column is editable: a renamed file cell would lose its caption
            captions = gr.Dataframe(headers=["file", "uploaded as", "caption", "size"],
                                    label="Captions (edit the caption column, then save)",
                                    interactive=True, static_columns=[0, 1, 3], wrap=True,
                                    elem_id="sd-captions")
            save_caps = gr.Button("Save captions")
        with gr.Column():
            gr.Markdown("### 2. Settings")
            base, base_note = _base_dropdown(studio, "sd15", _label("base_model"),
                                             _info("base_model"))
            sf_config = gr.Textbox("", label=_label("single_file_config"),
                                   info=_info("single_file_config"))
            with gr.Row():
                name = gr.Textbox(_default("output_name"), label=_label("output_name"))
                trigger = gr.Textbox(label="Trigger words (comma-separated)",
                                     placeholder="sks")
            with gr.Row():
                rank = gr.Slider(4, 16, value=_default("rank"), step=1, label=_label("rank"),
                                 info=_info("rank"))
                alpha = gr.Number(_default("alpha"), label=_label("alpha"))
                steps = gr.Number(_default("max_steps"), precision=0, label=_label("max_steps"))
                epochs = gr.Number(_default("epochs"), precision=0, label=_label("epochs"),
                                   info=_info("epochs"))
            with gr.Row():
                lr = gr.Number(_default("learning_rate"), label=_label("learning_rate"))
                sched = gr.Dropdown(list(LR_SCHEDULES), value=_default("lr_scheduler"),
                                    label=_label("lr_scheduler"))
                warmup = gr.Number(0, precision=0, label=_label("lr_warmup_steps"))
            with gr.Row():
                batch = gr.Number(1, precision=0, label=_label("batch_size"))
                accum = gr.Number(1, precision=0, label=_label("grad_accumulation"))
                gc = gr.Radio(["auto", "on", "off"], value="auto",
                              label=_label("gradient_checkpointing"))
            with gr.Row():
                precision = gr.Radio(["fp16", "bf16", "no"], value="fp16",
                                     label=_label("mixed_precision"))
                adam8 = gr.Checkbox(True, label=_label("use_8bit_adam"))
                te = gr.Checkbox(False, label=_label("train_text_encoder"))
            with gr.Row():
                seed = gr.Number(_default("seed"), precision=0, label=_label("seed"))
                noise_offset = gr.Number(0.0, label=_label("noise_offset"),
                                         info=_info("noise_offset"))
                attention = gr.Radio(["sdpa", "xformers"], value=_default("attention"),
                                     label=_label("attention"), info=_info("attention"))
            with gr.Accordion("Prior preservation", open=False):
                prior = gr.Checkbox(False, label=_label("prior_preservation"))
                class_prompt = gr.Textbox(label=_label("class_prompt"),
                                          placeholder="a photo of a backpack")
                with gr.Row():
                    n_class = gr.Number(100, precision=0, label=_label("num_class_images"))
                    prior_w = gr.Number(1.0, label=_label("prior_loss_weight"))
                class_dir = gr.Textbox(label=_label("class_images_dir"),
                                       info="a folder on this machine; empty = the base model "
                                       "draws them (cached for later runs)")
            with gr.Accordion("Samples during training", open=False):
                sample_prompts = gr.Textbox(label=_label("sample_prompts"), lines=3,
                                            placeholder="a photo of sks backpack on a beach")
                sample_every = gr.Number(100, precision=0, label=_label("sample_every"))
            with gr.Row():
                fit_btn = gr.Button("Will it fit?")
                start = gr.Button("Start training", variant="primary")
            fit_md = gr.Markdown()
    panel = job_panel(studio, kind=service.KIND, plot_keys=("train_loss",))
    samples = gr.Gallery(label="Samples (fixed prompts and seed)", columns=4, height=300,
                         elem_id="sd-samples")
    timer = gr.Timer(3.0)

    owner = owner_state()  # the last input of every handler: datasets, runs, LoRAs are per owner

    def do_prepare(files, instance, size, buckets=False, crop="center",
                   secret: str | None = None, request: gr.Request = None):
        try:
            ds = service.prepare(studio, files or [], int(size), instance or "",
                                 buckets=bool(buckets), crop=crop or "center",
                                 owner=owner_of(secret, request))
        except ValueError as e:
            raise gr.Error(str(e)) from None
        for w in ds.warnings:
            gr.Warning(w)
        return str(ds.folder), ds.report().replace("\n", "  \n"), _preview(ds), \
            _captions_frame(str(ds.folder))

    prep_btn.click(do_prepare, inputs=[files, instance, size, buckets, crop, owner],
                   outputs=[dataset_dir, prep_report, preview, captions], api_name="sd_prepare")

    def do_save_captions(folder, frame, secret: str | None = None, request: gr.Request = None):
        if not folder:
            raise gr.Error("Prepare a dataset first.")
        rows = frame.values.tolist() if hasattr(frame, "values") else frame
        edits = {str(r[0]): r[2] for r in rows if r and str(r[0]).strip()}
        try:
            ds, changed = service.save_captions(studio, folder, edits,
                                                owner_of(secret, request))
        except ValueError as e:
            raise gr.Error(str(e)) from None
        n = len(edits)
        gr.Info(f"Saved {n} caption{'s' if n != 1 else ''} ({changed} changed).")
        return _preview(ds)

    save_caps.click(do_save_captions, inputs=[dataset_dir, captions, owner], outputs=[preview],
                    api_name="sd_save_captions")

    # new settings go at the end: scripts call sd_train/sd_estimate with positional values
    settings = [dataset_dir, base, name, trigger, size, rank, alpha, steps, lr, sched, warmup,
                batch, accum, gc, precision, adam8, te, seed, noise_offset, prior, class_prompt,
                n_class, prior_w, class_dir, sample_prompts, sample_every, epochs, sf_config,
                attention]

    def to_config(values: list[Any]) -> SDTrainConfig:
        (folder, base_v, name_v, trig, size_v, rank_v, alpha_v, steps_v, lr_v, sched_v,
         warm_v, batch_v, accum_v, gc_v, prec_v, adam_v, te_v, seed_v, off_v, prior_v, cp_v,
         ncls_v, pw_v, cdir_v, sp_v, se_v, epochs_v, sfc_v, attn_v) = values
        if not folder:
            raise gr.Error("Prepare a dataset first (step 1).")
        _c = SDTrainConfig.coerce  # a bad number names its field
        try:
            cfg = SDTrainConfig(
                base_model=(base_v or "").strip(), dataset_dir=folder,
                output_name=(name_v or "my_lora").strip(), resolution=_c("resolution", size_v),
                trigger_words=[t.strip() for t in (trig or "").split(",") if t.strip()],
                rank=_c("rank", rank_v), alpha=_c("alpha", alpha_v),
                max_steps=_c("max_steps", steps_v), epochs=_c("epochs", epochs_v or 0),
                learning_rate=_c("learning_rate", lr_v), lr_scheduler=sched_v,
                lr_warmup_steps=_c("lr_warmup_steps", warm_v),
                batch_size=_c("batch_size", batch_v),
                grad_accumulation=_c("grad_accumulation", accum_v),
                gradient_checkpointing=gc_v, mixed_precision=prec_v,
                use_8bit_adam=bool(adam_v), train_text_encoder=bool(te_v),
                seed=_c("seed", seed_v), noise_offset=_c("noise_offset", off_v),
                prior_preservation=bool(prior_v), class_prompt=cp_v or "",
                num_class_images=_c("num_class_images", ncls_v),
                prior_loss_weight=_c("prior_loss_weight", pw_v),
                class_images_dir=(cdir_v or "").strip(),
                sample_prompts=[p.strip() for p in (sp_v or "").splitlines() if p.strip()],
                sample_every=_c("sample_every", se_v), single_file_config=(sfc_v or "").strip(),
                attention=attn_v or "sdpa")
            cfg.validate()
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return cfg

    # gr.Request first: Gradio fills it only before *values; the owner's secret comes last
    def do_fit(request: gr.Request, *values):
        *values, secret = values
        cfg, est = service.complete_config(studio, to_config(list(values)),
                                           owner_of(secret, request))
        return est.describe()

    fit_btn.click(do_fit, inputs=[*settings, owner], outputs=[fit_md], api_name="sd_estimate")

    def do_start(request: gr.Request, *values):
        *values, secret = values
        who = owner_of(secret, request)
        try:
            run_id = service.submit_training(studio, to_config(list(values)), who)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        gr.Info(f"Training queued: {run_id}")
        return panel.select(run_id, studio, who)

    start.click(do_start, inputs=[*settings, owner], outputs=[panel.run_picker],
                api_name="sd_train")

    def samples_of(run_id: str | None, secret: str | None = None, request: gr.Request = None):
        return service.sample_images(studio, run_id, owner_of(secret, request))

    timer.tick(samples_of, inputs=[panel.run_picker, owner], outputs=[samples],
               api_visibility="private", show_progress="hidden", queue=False)
    return {"dataset_dir": dataset_dir, "prep_report": prep_report, "preview": preview,
            "captions": captions, "base": base, "base_note": base_note, "size": size,
            "steps": steps, "rank": rank, "alpha": alpha, "lr": lr, "precision": precision,
            "adam8": adam8, "gc": gc, "sample_every": sample_every,
            "sample_prompts": sample_prompts, "name": name, "trigger": trigger,
            "demo_btn": demo_btn, "demo_md": demo_md}


def _generate_tab(studio: Any) -> dict[str, Any]:
    with gr.Row():
        with gr.Column(scale=2):
            arch = gr.Radio([("SD 1.5", "sd15"), ("SDXL", "sdxl")], value="sd15",
                            label="Architecture")
            base, base_note = _base_dropdown(studio, "sd15", "Base model",
                                             "hub id, local folder or .safetensors")
            sf_config = gr.Textbox("", label=_label("single_file_config"),
                                   info=_info("single_file_config"))
            prompt = gr.Textbox(label="Prompt", lines=2)
            gr.Examples([[t] for t in prompts("sd")], inputs=[prompt], cache_examples=False,
                        label="Example prompts", elem_id="sd-examples")
            negative = gr.Textbox(label="Negative prompt")
            with gr.Row():
                steps = gr.Slider(1, 100, value=25, step=1, label="Steps")
                guidance = gr.Slider(1, 15, value=7, step=0.5, label="Guidance")
                seed = gr.Number(-1, precision=0, label="Seed", info="-1 = random")
            with gr.Row():
                width = gr.Slider(0, 1536, value=0, step=64, label="Width",
                                  info="0 = native (512 / 1024)")
                height = gr.Slider(0, 1536, value=0, step=64, label="Height")
                batch = gr.Slider(1, 8, value=1, step=1, label="Batch")
            scheduler = gr.Dropdown(list(SCHEDULERS), value="DPM++ 2M", label="Scheduler")
            lora_boxes, strengths = [], []
            with gr.Accordion("LoRAs", open=True):
                for i in range(LORA_SLOTS):
                    with gr.Row():
                        # built once for every visitor: the shared LoRAs; focus lists the
                        # caller's own too
                        lora_boxes.append(gr.Dropdown(service.list_loras(studio, None),
                                                      value=None,
                                                      label=f"LoRA {i + 1}", scale=3,
                                                      allow_custom_value=True))
                        strengths.append(gr.Slider(-1, 2, value=1.0, step=0.05,
                                                   label="Strength", scale=2))
            with gr.Row():
                go = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images (PNG with prompt, seed and LoRAs inside)",
                                 columns=2, height=560, format="png", elem_id="sd-images")
            plan_md = gr.Markdown()

    owner = owner_state()

    def refresh_loras(secret: str | None = None, request: gr.Request = None):
        choices = service.list_loras(studio, owner_of(secret, request))
        return [gr.update(choices=choices) for _ in range(LORA_SLOTS)]

    for box in lora_boxes:
        box.focus(refresh_loras, inputs=[owner], outputs=lora_boxes, api_visibility="private",
                  queue=False)
    def on_arch(a):
        options = service.base_options(studio, a)
        return (gr.update(choices=options, value=options[0][1] if options else None),
                service.base_note(studio, a))

    arch.change(on_arch, inputs=[arch], outputs=[base, base_note], api_visibility="private",
                queue=False)

    def do_generate(arch_v, base_v, prompt_v, neg_v, steps_v, guid_v, seed_v, w_v, h_v, b_v,
                    sched_v, lora1, lora2, lora3, str1, str2, str3, sfc_v="", secret=None,
                    request: gr.Request = None, progress=gr.Progress()):  # noqa: B008
        who = owner_of(secret, request)
        try:  # another session's LoRA is refused as a missing one
            loras = [LoraChoice(service.check_lora(studio, p, who), float(s)) for p, s in
                     ((lora1, str1), (lora2, str2), (lora3, str3)) if p]
        except ValueError as e:
            raise gr.Error(str(e)) from None
        if not (base_v or "").strip():
            raise gr.Error("Choose a base model (hub id, local folder or .safetensors file).")
        req = GenerateRequest(base=base_v.strip(), arch=arch_v, prompt=prompt_v or "",
                              negative_prompt=neg_v or "", steps=int(steps_v),
                              guidance=float(guid_v), seed=int(seed_v), width=int(w_v),
                              height=int(h_v), batch=int(b_v), scheduler=sched_v, loras=loras,
                              single_file_config=(sfc_v or "").strip())
        try:
            with studio.stops.running("sd", session_of(request)) as flag:
                result = generate(studio, req, studio.settings.exports_dir / "sd_images",
                                  on_step=lambda i, n: progress((i, n), desc="denoising"),
                                  should_stop=flag.is_set)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # BudgetExceeded, load errors: say it plainly
            raise gr.Error(f"{type(e).__name__}: {e}") from None
        note = f"**Memory plan:** {result.plan}  \n{result.seconds:.1f} s"
        if result.stopped_at:
            note += f" — stopped at step {result.stopped_at}"
        return [(str(im.path), f"seed {im.seed}") for im in result.images], note

    go.click(do_generate,
             inputs=[arch, base, prompt, negative, steps, guidance, seed, width, height, batch,
                     scheduler, *lora_boxes, *strengths, sf_config, owner],
             outputs=[gallery, plan_md], api_name="sd_generate", concurrency_id="gpu")

    def do_stop(request: gr.Request):
        if studio.stops.stop("sd", session_of(request)):
            return "Stopping after the current step…"
        return "Nothing is running."

    stop.click(do_stop, outputs=[plan_md], api_name="sd_stop", queue=False)
    return {"arch": arch, "base": base, "base_note": base_note, "prompt": prompt,
            "steps": steps, "width": width, "height": height, "scheduler": scheduler}
