"""The Whisper fine-tuning job: ``run(config, report)`` in its own process (see studio.jobs).

1. Load the base (hub id or local folder) and its processor; fix language and task.
2. Transcribe the held-out pieces with the base: WER and glossary recall *before*.
3. Train with transformers' Trainer: a full fine-tune (small) or LoRA via PEFT (medium), bf16 or
   fp16 on CUDA, 8-bit AdamW, SpecAugment, gradient checkpointing when the memory needs it; WER
   on the held-out pieces every N steps; Cancel saves a checkpoint, Resume continues from it.
4. Transcribe again: WER and recall *after*, and the pieces whose transcript changed most.
5. Save the merged model (transformers format) with its run card, and convert it to
   CTranslate2 float16 and int8 so faster-whisper (the Transcribe tab) loads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tabs.whisper_ft import metrics
from tabs.whisper_ft.config import WhisperFTConfig
from tabs.whisper_ft.data import Piece, load_pieces

IGNORE = -100
GiB = 1024**3
SPEC_AUGMENT = {"mask_time_prob": 0.05, "mask_time_length": 10, "mask_time_min_masks": 2,
                "mask_feature_prob": 0.05, "mask_feature_length": 10,
                "mask_feature_min_masks": 0}

# Whisper sizes (parameters, d_model, encoder layers) for the memory estimate when the base's
# config cannot be read (a hub id on an offline machine).
ARCHS = {"tiny": (39e6, 384, 4), "base": (74e6, 512, 6), "small": (244e6, 768, 12),
         "medium": (769e6, 1024, 24), "large": (1550e6, 1280, 32), "turbo": (809e6, 1280, 32)}


# ----- memory ----------------------------------------------------------------------------------
def arch_of(base: str) -> tuple[float, int, int]:
    """(parameters, d_model, encoder layers) of the base, from its config when readable."""
    try:
        from transformers import WhisperConfig

        c = WhisperConfig.from_pretrained(base)
        d, layers = c.d_model, c.encoder_layers
        per_layer = 12 * d * d  # attention 4d^2 + MLP 8d^2 (ffn 4d), both stacks
        params = per_layer * (c.encoder_layers + c.decoder_layers) + c.vocab_size * d \
            + 1.3 * per_layer * c.decoder_layers / 3  # cross-attention
        return float(params), d, layers
    except Exception:  # offline hub id: the known sizes
        name = Path(base).name.lower()
        for key in ("turbo", "large", "medium", "small", "base", "tiny"):
            if key in name:
                return ARCHS[key]
        return ARCHS["small"]


def estimate_bytes(base: str, method: str, batch: int, checkpointing: bool,
                   cuda_8bit: bool = True) -> int:
    """Peak training memory, roughly: weights, gradients and optimizer state of what trains,
    encoder activations (1500 frames per 30 s window dominate) and the decoder's logits."""
    params, d, layers = arch_of(base)
    if method == "lora":
        states = 2 * params + 0.03 * params * 16  # frozen half-precision base + adapter state
    else:
        states = params * (4 + 4 + (2 if cuda_8bit else 8) + 2)  # fp32 master, grads, Adam,
        # half-precision autocast copies
    per_layer = 1500 * d * batch * (2 if checkpointing else 34)  # bytes per encoder layer
    acts = per_layer * layers + (1500 * d * batch * 34 if checkpointing else 0)
    logits = batch * 120 * 51865 * 4 * 3
    # x1.25 for the decoder and cross-attention, calibrated on bench/results/whisper_ft.json
    # (small, full, batch 8, no checkpointing: 8.09 GiB measured, this gives 8.2)
    return int(states + acts * 1.25 + logits + 0.5 * GiB)


def want_checkpointing(cfg: WhisperFTConfig, device: str, budget: int | None) -> bool:
    if device != "cuda" or cfg.gradient_checkpointing == "off":
        return False
    if cfg.gradient_checkpointing == "on":
        return True
    if budget is None:
        import torch

        budget = torch.cuda.get_device_properties(0).total_memory
    method = cfg.resolved_method()
    return estimate_bytes(cfg.base_model, method, cfg.batch_size, False) > 0.9 * budget


# ----- model -----------------------------------------------------------------------------------
def compute_dtype(cfg: WhisperFTConfig, device: str) -> Any:
    import torch

    if device != "cuda" or cfg.precision == "fp32":
        return torch.float32
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def load_processor(source: str) -> Any:
    from transformers import WhisperProcessor

    try:
        return WhisperProcessor.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the Whisper tokenizer/feature extractor of {source}: "
                         f"{e}") from None


def is_multilingual(model: Any) -> bool:
    return bool(getattr(model.generation_config, "is_multilingual",
                        model.config.vocab_size >= 51865))


def fix_language(model: Any, processor: Any, language: str, task: str) -> list[int]:
    """Language and task fixed for training and decoding; returns the label prefix (the tokens
    after <|startoftranscript|>: language, task, <|notimestamps|>)."""
    tok = processor.tokenizer
    g = model.generation_config
    prefix = []
    if is_multilingual(model):
        lang_id = tok.convert_tokens_to_ids(f"<|{language}|>")
        task_id = tok.convert_tokens_to_ids(f"<|{task}|>")
        if lang_id in (None, tok.unk_token_id):
            raise ValueError(f"{language!r} is not a language this Whisper knows")
        prefix += [lang_id, task_id]
        g.language, g.task = language, task
        tok.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    elif language != "en" or task != "transcribe":
        raise ValueError("this base is an English-only Whisper: language must be en and task "
                         "transcribe (choose a multilingual base for other languages)")
    g.forced_decoder_ids = None
    model.config.forced_decoder_ids = None
    prefix.append(tok.convert_tokens_to_ids("<|notimestamps|>"))
    return prefix


def load_model(cfg: WhisperFTConfig, device: str, dtype: Any, checkpointing: bool) -> tuple[
        Any, Any, list[int], list[str]]:
    """(model ready to train, processor, label prefix, notes)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    processor = load_processor(cfg.base_model)
    # full fine-tune: fp32 master weights under autocast; LoRA: the frozen base in half
    load_dtype = dtype if cfg.resolved_method() == "lora" else torch.float32
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            cfg.base_model, dtype=load_dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the Whisper model {cfg.base_model}: {e}") from None
    prefix = fix_language(model, processor, cfg.language, cfg.task)
    model, notes = prepare_for_training(model.to(device), cfg, checkpointing)
    return model, processor, prefix, notes


def prepare_for_training(model: Any, cfg: WhisperFTConfig, checkpointing: bool) -> tuple[
        Any, list[str]]:
    """SpecAugment, gradient checkpointing, a frozen encoder and LoRA, as `cfg` says (the GPU
    bench calls this on random weights of the real architectures)."""
    notes = []
    c = model.config
    c.apply_spec_augment = cfg.spec_augment
    if cfg.spec_augment:
        for k, v in SPEC_AUGMENT.items():
            setattr(c, k, v)
        notes.append("SpecAugment: time and frequency masks (p 0.05, width 10)")
    if checkpointing:
        # non-reentrant: gradients reach LoRA weights even though the encoder's input (the
        # log-mel features) does not require grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        c.use_cache = False
    notes.append("gradient checkpointing " + ("on" if checkpointing else "off"))
    if cfg.freeze_encoder:
        model.model.encoder.requires_grad_(False)
        notes.append("encoder frozen: only the decoder trains")
    if cfg.resolved_method() == "lora":
        from peft import LoraConfig, get_peft_model

        names = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
        where = r".*decoder.*" if cfg.freeze_encoder else r".*"
        targets = where + r"\.(" + "|".join(map(re.escape, names)) + r")$"
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=targets, bias="none"))
        trainable, total = model.get_nb_trainable_parameters()
        notes.append(f"LoRA r{cfg.lora_r} on {cfg.lora_targets}: {trainable / 1e6:.2f}M "
                     f"trainable of {total / 1e6:.1f}M")
    else:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        notes.append(f"full fine-tune: {n / 1e6:.1f}M trainable parameters")
    return model, notes


def base_of(model: Any) -> Any:
    """The WhisperForConditionalGeneration inside a PEFT wrapper (LoRA layers stay in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ----- data ------------------------------------------------------------------------------------
class PieceDataset:
    """Pieces -> {input_features, labels}; audio is read and featurised when a batch needs it."""

    def __init__(self, pieces: list[Piece], folder: Path, processor: Any, prefix: list[int],
                 max_label: int):
        self.pieces, self.folder, self.processor = pieces, Path(folder), processor
        self.prefix, self.max_label = prefix, max_label

    def __len__(self) -> int:
        return len(self.pieces)

    def labels(self, text: str) -> list[int]:
        tok = self.processor.tokenizer
        ids = tok(" " + text.strip(), add_special_tokens=False).input_ids
        return self.prefix + ids[: self.max_label - len(self.prefix) - 2] + [tok.eos_token_id]

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.pieces[i]
        return {"input_features": features(self.processor, self.folder / p.audio),
                "labels": self.labels(p.text)}


def features(processor: Any, path: Path) -> Any:
    from tabs.whisper.audio import read_wav

    audio = read_wav(path)
    return processor.feature_extractor(audio, sampling_rate=16000,
                                       return_tensors="np").input_features[0]


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np
    import torch

    feats = torch.from_numpy(np.stack([b["input_features"] for b in batch]))
    n = max(len(b["labels"]) for b in batch)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    for i, b in enumerate(batch):
        labels[i, :len(b["labels"])] = torch.tensor(b["labels"])
    return {"input_features": feats, "labels": labels}


def transcribe_pieces(model: Any, processor: Any, pieces: list[Piece], folder: Path,
                      cfg: WhisperFTConfig, batch_size: int = 8) -> list[str]:
    """Greedy transcripts of `pieces` (language and task fixed), in order."""
    import numpy as np
    import torch

    m = base_of(model)
    was_training = model.training
    model.eval()
    param = next(m.parameters())
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.generation_max_tokens, "num_beams": 1,
                              "do_sample": False}
    if is_multilingual(m):
        kwargs.update(language=cfg.language, task=cfg.task)
    out = []
    try:
        for i in range(0, len(pieces), batch_size):
            feats = np.stack([features(processor, folder / p.audio)
                              for p in pieces[i:i + batch_size]])
            x = torch.from_numpy(feats).to(param.device, param.dtype)
            with torch.no_grad(), torch.autocast(param.device.type, enabled=False):
                ids = m.generate(input_features=x, **kwargs)
            out += [t.strip() for t in processor.tokenizer.batch_decode(
                ids, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return out


def evaluate(model: Any, processor: Any, pieces: list[Piece], folder: Path,
             cfg: WhisperFTConfig) -> dict[str, Any]:
    hyps = transcribe_pieces(model, processor, pieces, folder, cfg)
    refs = [p.text for p in pieces]
    return {"wer": metrics.wer(refs, hyps), "hyps": hyps,
            "glossary": metrics.glossary_recall(cfg.glossary_terms(), refs, hyps)}


# ----- the job ---------------------------------------------------------------------------------
def optimizer_name(cfg: WhisperFTConfig, device: str) -> str:
    import importlib.util

    if cfg.optimizer == "adamw_torch" or device != "cuda":
        return "adamw_torch_fused" if device == "cuda" else "adamw_torch"
    if importlib.util.find_spec("bitsandbytes") is None:
        if cfg.optimizer == "adamw_8bit":
            raise ValueError("8-bit AdamW needs bitsandbytes (pip install bitsandbytes)")
        return "adamw_torch_fused"
    return "adamw_bnb_8bit"


def training_args(cfg: WhisperFTConfig, run_dir: Path, device: str, dtype: Any) -> Any:
    import torch
    from transformers import TrainingArguments

    cuda = device == "cuda"
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accumulation, learning_rate=cfg.resolved_lr(),
        warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear", logging_steps=max(1, min(25, cfg.max_steps // 20)),
        logging_first_step=True, eval_strategy="no",
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=2, bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16, optim=optimizer_name(cfg, device),
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, use_cpu=not cuda,
        remove_unused_columns=False, disable_tqdm=True, label_names=["labels"],
        dataloader_num_workers=2 if cuda else 0, dataloader_pin_memory=cuda)


def run(config: dict[str, Any], report: Any) -> None:
    """Fine-tune, report live, checkpoint, and finish with before/after, the merged model and
    its CTranslate2 conversions."""
    import torch
    from transformers import Trainer

    from studio.hooks import trainer_callback, vram_peak_gib

    cfg = WhisperFTConfig.from_dict(config)
    run_dir = Path(report.run_dir)
    folder = Path(cfg.dataset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = compute_dtype(cfg, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pieces = load_pieces(folder)
    train = [p for p in pieces if p.split == "train"]
    held = [p for p in pieces if p.split == "heldout"]
    if not train:
        raise ValueError("the dataset has no training pieces")
    report.log(f"data: {len(train)} train and {len(held)} held-out pieces "
               f"({sum(p.seconds for p in pieces) / 3600:.2f} h) from {folder.name}")
    report.progress(0, cfg.max_steps, "loading the base model")
    checkpointing = want_checkpointing(cfg, device, None)
    model, processor, prefix, notes = load_model(cfg, device, dtype, checkpointing)
    report.log(f"base {cfg.base_model} ({cfg.resolved_method()}, {str(dtype).split('.')[-1]} "
               f"on {device}); language {cfg.language}, task {cfg.task}")
    for n in notes:
        report.log(n)
    max_label = base_of(model).config.max_target_positions
    train_ds = PieceDataset(train, folder, processor, prefix, max_label)
    eval_set = held[: cfg.eval_pieces]

    before_path = run_dir / "before.json"
    if before_path.exists():  # a resumed run keeps the base's numbers of its first attempt
        before = json.loads(before_path.read_text())
    else:
        report.progress(0, cfg.max_steps, "transcribing the held-out pieces with the base")
        before = evaluate(model, processor, held, folder, cfg) if held else {}
        before_path.write_text(json.dumps(before, indent=1, ensure_ascii=False))
        if held:
            report.metrics(0, eval_wer=before["wer"])
            report.log(f"base: held-out WER {before['wer']:.3f}" + _recall_note(before))

    def eval_now(step: int) -> None:
        if not eval_set:
            return
        ev = evaluate(model, processor, eval_set, folder, cfg)
        report.metrics(step, eval_wer=ev["wer"], glossary_recall=ev["glossary"]["recall"])
        report.log(f"step {step}: held-out WER {ev['wer']:.3f}" + _recall_note(ev))

    args = training_args(cfg, run_dir, device, dtype)
    optim = getattr(args.optim, "value", args.optim)
    report.log(f"optimizer {optim}, learning rate {args.learning_rate:g}, batch "
               f"{cfg.batch_size} x {cfg.grad_accumulation}, {cfg.max_steps} steps")
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collate,
                      callbacks=[trainer_callback(report, cfg.eval_steps, eval_now)])
    last = report.last_checkpoint()
    if last:
        report.log(f"resumed from step {last[1]} ({last[0].name})")
    trainer.train(resume_from_checkpoint=str(last[0]) if last else None)
    if report.should_stop():
        report.log(f"stopped at step {trainer.state.global_step}; resume to continue")
        return
    finish(cfg, report, trainer, processor, held, folder, before, device)
    report.log(f"peak VRAM {vram_peak_gib():.2f} GiB" if vram_peak_gib() else "done on CPU")


def _recall_note(ev: dict[str, Any]) -> str:
    g = ev.get("glossary") or {}
    return f", glossary recall {g['recall']:.2f}" if g.get("recall") is not None else ""


def finish(cfg: WhisperFTConfig, report: Any, trainer: Any, processor: Any,
           held: list[Piece], folder: Path, before: dict[str, Any], device: str) -> None:
    from studio.hooks import vram_peak_gib

    run_dir = Path(report.run_dir)
    step = trainer.state.global_step
    model = trainer.model
    results: dict[str, Any] = {"step": step, "device": device,
                               "method": cfg.resolved_method(), "base_model": cfg.base_model,
                               "language": cfg.language, "task": cfg.task,
                               "train_loss": _last(trainer.state.log_history, "loss"),
                               "first_loss": _first(trainer.state.log_history, "loss")}
    if held:
        report.progress(step, step, "transcribing the held-out pieces with the tuned model")
        after = evaluate(model, processor, held, folder, cfg)
        refs = [p.text for p in held]
        results.update(wer_before=before["wer"], wer_after=after["wer"],
                       glossary_before=before["glossary"], glossary_after=after["glossary"],
                       heldout_pieces=len(held))
        report.metrics(step, eval_wer=after["wer"],
                       glossary_recall=after["glossary"]["recall"])
        report.log(f"held-out WER {before['wer']:.3f} -> {after['wer']:.3f}"
                   + (f"; glossary recall {before['glossary']['recall']} -> "
                      f"{after['glossary']['recall']}" if cfg.glossary_terms() else ""))
        changed = metrics.most_changed(refs, before["hyps"], after["hyps"])
        (run_dir / "changed.json").write_text(json.dumps(changed, indent=1,
                                                         ensure_ascii=False))
        (run_dir / "after.json").write_text(json.dumps(after, indent=1, ensure_ascii=False))
        report.artifact(run_dir / "changed.json", label="most changed pieces")
    results["vram_peak_gib"] = vram_peak_gib()
    report.progress(step, step, "saving the merged model")
    model_dir = save_merged(model, processor, run_dir / "model")
    (run_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    write_run_card(model_dir, cfg, results)
    report.artifact(model_dir, kind="model", label="tuned model (transformers)")
    report.artifact(run_dir / "results.json", label="results")
    if cfg.export_ct2:
        report.progress(step, step, "converting to CTranslate2 (float16, int8)")
        for q, out in convert_ct2(model_dir, run_dir).items():
            write_run_card(out, cfg, results, fmt=f"CTranslate2 {q}")
            report.artifact(out, kind="model", label=f"CTranslate2 {q} (faster-whisper)")
            report.log(f"CTranslate2 {q}: {out}")
    report.progress(step, step, "done")


def _last(history: list[dict], key: str) -> float | None:
    vals = [h[key] for h in history if key in h]
    return vals[-1] if vals else None


def _first(history: list[dict], key: str) -> float | None:
    vals = [h[key] for h in history if key in h]
    return vals[0] if vals else None


def save_merged(model: Any, processor: Any, out: Path) -> Path:
    """The tuned model as one plain transformers Whisper folder (LoRA merged in)."""
    m = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    m.config.use_cache = True
    m.config.apply_spec_augment = False  # decoding never masks; keeps other tools' defaults
    m.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


CT2_FILES = ["tokenizer.json", "preprocessor_config.json"]


def convert_ct2(model_dir: Path, dest: Path, quantizations: tuple[str, ...] = ("float16",
                                                                               "int8")
                ) -> dict[str, Path]:
    """CTranslate2 folders (``ct2-float16``, ``ct2-int8``) that faster-whisper loads, made by
    ctranslate2's own converter (what ``ct2-transformers-converter`` runs)."""
    import shutil

    from ctranslate2.converters import TransformersConverter

    files = [f for f in CT2_FILES if (Path(model_dir) / f).is_file()]
    out = {}
    for q in quantizations:
        target = Path(dest) / f"ct2-{q}"
        if target.exists():
            shutil.rmtree(target)
        TransformersConverter(str(model_dir), copy_files=files).convert(str(target),
                                                                        quantization=q)
        out[q] = target
    return out


def write_run_card(folder: Path, cfg: WhisperFTConfig, results: dict[str, Any],
                   fmt: str = "transformers") -> Path:
    """run_card.json + RUN_CARD.md: base, data hash, settings, before/after, versions."""
    from studio.jobs import library_versions

    versions = library_versions()
    card = {"format": fmt, "base_model": cfg.base_model, "dataset": Path(cfg.dataset).name,
            "dataset_hash": cfg.dataset_hash, "settings": cfg.to_dict(), "results": results,
            "versions": versions}
    (folder / "run_card.json").write_text(json.dumps(card, indent=1, default=str,
                                                     ensure_ascii=False))
    lines = [f"# Whisper fine-tune of {cfg.base_model} ({fmt})", "",
             f"- data: {Path(cfg.dataset).name} (hash {cfg.dataset_hash or 'n/a'})",
             f"- method: {results.get('method')}, {results.get('step')} steps on "
             f"{results.get('device')}; language {cfg.language}, task {cfg.task}"]
    if "wer_before" in results:
        lines.append(f"- held-out WER: {results['wer_before']:.3f} (base) -> "
                     f"{results['wer_after']:.3f} (tuned) on {results['heldout_pieces']} pieces")
        gb, ga = results["glossary_before"], results["glossary_after"]
        if gb.get("recall") is not None:
            lines.append(f"- glossary recall: {gb['recall']:.2f} -> {ga['recall']:.2f} "
                         f"({ga['occurrences']} occurrences of {len(ga['terms'])} terms)")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    (folder / "RUN_CARD.md").write_text("\n".join(lines) + "\n")
    return folder / "run_card.json"

