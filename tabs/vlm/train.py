"""The VLM adapt job: ``run(config, report)`` in its own process (see studio.jobs).

QLoRA (LoRA on a 4-bit NF4 language model; plain LoRA on the CPU) of a vision-language model
on the user's image-text pairs: LoRA wraps the language model's linear layers only, the
vision tower stays frozen, the projector is trained only when asked (a full copy saved with
the adapter). The training loop is the QLoRA trainer's: the same Trainer subclass, arguments,
progress/loss/VRAM callback, cancel-with-checkpoint, resume and run card.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from studio.hooks import trainer_callback, vram_peak_gib
from tabs.qlora.train import (
    first_results,
    save_results,
    start_device,
    train_and_save,
    trainer_class,
    training_args,
)
from tabs.vlm import dataset as data
from tabs.vlm.config import VLMAdaptConfig
from tabs.vlm.engine import SKIP_QUANT, cap_pixels

PROJECTORS = ("multi_modal_projector", "visual.merger", "connector", "mm_projector")


def load_base(cfg: VLMAdaptConfig, device: str, dtype: Any, four_bit: bool
              ) -> tuple[Any, Any]:
    """Processor and model (the language model in 4-bit NF4 on CUDA when asked)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from studio.llm.engine import ModelSource, resolve_source

    where, _ = resolve_source(ModelSource(cfg.base_model))
    processor = AutoProcessor.from_pretrained(where)
    cap_pixels(processor, cfg.max_pixels or None)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype,
            llm_int8_skip_modules=SKIP_QUANT)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForImageTextToText.from_pretrained(where, **kwargs)
    if not four_bit:
        model = model.to(device)
    tok = processor.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return processor, model


def language_targets(model: Any, names: list[str] | None) -> str:
    """A peft target regex for the linear layers of the language model only (never the vision
    tower or projector): every one, or those whose last name is in `names`."""
    import torch

    from studio.llm.fast import decoder_stack

    stack = decoder_stack(model)
    prefix = next(n for n, m in model.named_modules() if m is stack)
    leaves = set()
    for name, mod in stack.named_modules():
        linear = isinstance(mod, torch.nn.Linear) or type(mod).__name__.startswith("Linear")
        if linear and name:
            leaves.add(name.rsplit(".", 1)[-1])
    chosen = sorted(leaves if names is None else leaves & set(names))
    if not chosen:
        raise ValueError(f"no linear layer named {', '.join(names or [])} in the language "
                         f"model; it has {', '.join(sorted(leaves))}")
    return rf"^{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, chosen))})$"


def projector_names(model: Any) -> list[str]:
    names = {n for n, _ in model.named_modules()}
    return [p for p in PROJECTORS if p in names or f"model.{p}" in names]


def add_lora(model: Any, cfg: VLMAdaptConfig) -> Any:
    """LoRA on the language model; everything else frozen except, if asked, the projector."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
        model.config.use_cache = False
    save = projector_names(model) if cfg.train_projector else None
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=language_targets(model, cfg.target_list()),
                      modules_to_save=save or None, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora)


class _Encoded:
    """A list of encoded pairs that Trainer can index (no datasets dependency)."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def encode_all(processor: Any, pairs: list[data.Pair], max_len: int
               ) -> tuple[_Encoded, list[str]]:
    items, notes = [], []
    for p in pairs:
        try:
            items.append(data.encode(processor, p, max_len))
        except ValueError as e:
            notes.append(f"line {p.line}: skipped, {e}")
    return _Encoded(items), notes


def run(config: dict[str, Any], report: Any) -> None:
    """Adapt, report live, checkpoint, and finish with eval, samples and a run card."""
    from studio.safety import freeze_input

    cfg = VLMAdaptConfig.from_dict(config)
    run_dir = Path(report.run_dir)
    cfg.train_file = str(freeze_input(cfg.train_file, run_dir, label="Data"))
    device, four_bit, dtype = start_device(cfg, report)

    ps = data.load_pairs(cfg.train_file, run_dir / "data")
    notes = data.require_clean(ps, cfg.skip_bad_records)
    train_pairs, eval_pairs = data.split(ps, cfg.eval_fraction, cfg.seed)
    report.progress(0, None, "loading the base model")
    processor, model = load_base(cfg, device, dtype, four_bit)
    model = add_lora(model, cfg)
    report.log(f"base {cfg.base_model}: language model "
               f"{'4-bit NF4 + double quant' if four_bit else dtype} on {device}; vision tower "
               f"frozen; projector {'trained' if cfg.train_projector else 'frozen'}")
    train_ex, cut = encode_all(processor, train_pairs, cfg.max_seq_length)
    eval_ex, _ = encode_all(processor, eval_pairs, cfg.max_seq_length)
    for note in notes + cut:
        report.log(note)
    if not len(train_ex):
        raise ValueError("no training pair fits within the max length")
    trainable, total = model.get_nb_trainable_parameters()
    report.log(f"LoRA r{cfg.lora_r} on the language model: {trainable / 1e6:.2f}M trainable of "
               f"{total / 1e6:.1f}M parameters")

    args = training_args(cfg, run_dir, device, dtype, bool(len(eval_ex)), [])
    pad = processor.tokenizer.pad_token_id
    trainer = trainer_class()(model=model, args=args, train_dataset=train_ex,
                              eval_dataset=eval_ex if len(eval_ex) else None,
                              data_collator=lambda f: data.collate(f, pad),
                              callbacks=[trainer_callback(report, tokens_per_s=True)])
    adapter_dir = run_dir / "adapter"
    if train_and_save(trainer, processor, adapter_dir, report):
        finish(cfg, report, trainer, processor, eval_pairs or train_pairs[:1], device,
               four_bit, adapter_dir, bool(len(eval_ex)))


def finish(cfg: VLMAdaptConfig, report: Any, trainer: Any, processor: Any,
           sample_pairs: list[data.Pair], device: str, four_bit: bool, adapter_dir: Path,
           has_eval: bool) -> None:
    """Final eval loss, before/after samples on held-out pictures, results and the run card."""
    run_dir = Path(report.run_dir)
    step = trainer.state.global_step
    results = first_results(trainer, device, four_bit)
    if has_eval:
        ev = trainer.evaluate()
        results["eval_loss"] = ev["eval_loss"]
        results["eval_ppl"] = math.exp(min(50.0, ev["eval_loss"]))
        report.metrics(step, eval_loss=ev["eval_loss"], eval_ppl=results["eval_ppl"])
        report.log(f"final eval loss {ev['eval_loss']:.4f}")
    results["vram_peak_gib"] = vram_peak_gib()
    samples = samples_before_after(trainer.model, processor, sample_pairs[:cfg.sample_count],
                                   cfg.sample_tokens, run_dir)
    save_results(cfg, report, adapter_dir, samples, results)


def samples_before_after(model: Any, processor: Any, pairs: list[data.Pair],
                         max_new_tokens: int, run_dir: Path) -> list[dict[str, str]]:
    """Greedy answers of the base (adapter off) and the adapter on held-out pictures."""
    out = []
    for p in pairs:
        last = max(i for i, t in enumerate(p.messages) if t["role"] == "assistant")
        prompt = p.messages[:last]
        n_images = sum(t["content"].count(data.IMAGE) for t in prompt)
        msgs = data.engine_messages(prompt, [str(x) for x in p.images[:n_images]])
        row = {"picture": str(Path(p.images[0]).relative_to(run_dir))
               if Path(p.images[0]).is_relative_to(run_dir) else Path(p.images[0]).name,
               "prompt": prompt[-1]["content"].replace(data.IMAGE, "").strip(),
               "expected": p.messages[last]["content"],
               "adapter": generate(model, processor, msgs, max_new_tokens)}
        with model.disable_adapter():
            row["base"] = generate(model, processor, msgs, max_new_tokens)
        out.append(row)
    return out


def generate(model: Any, processor: Any, messages: list[dict], max_new_tokens: int) -> str:
    """One greedy answer through the model's own generate() (a check, not the chat path)."""
    import torch

    from tabs.vlm.engine import split_images

    shaped, images, _ = split_images(messages)
    text = processor.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id, use_cache=True)
    model.train(was_training)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True).strip()
