"""The QLoRA training job: ``run(config, report)`` in its own process (see studio.jobs).

transformers' Trainer + peft do the training; studio.hooks' callback turns its events into the
studio's Reporter (losses, tokens/s, VRAM peak, progress), turns Cancel into
``control.should_training_stop`` (with a checkpoint), and marks every checkpoint so a cancelled or
crashed run resumes through ``report.last_checkpoint()``. On a machine without CUDA,
bitsandbytes' 4-bit cannot run: the job trains plain LoRA on float32 weights and says so.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from studio.hooks import resume_from, trainer_callback, vram_peak_gib
from studio.safety import freeze_input
from tabs.qlora import dataset as data
from tabs.qlora.config import QLoRAConfig

CPU_NOTE = ("No CUDA GPU: 4-bit NF4 (bitsandbytes) needs one, so this run trains plain LoRA on "
            "float32 weights on the CPU (same adapter format, no quantization).")


# ----- model -----------------------------------------------------------------------------------
def start_device(cfg: Any, report: Any) -> tuple[str, bool, Any]:
    """The run's device, whether the base loads in 4-bit NF4 and the compute dtype; a CPU run
    says it trains plain LoRA, and a CUDA run's VRAM peak is measured from here."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    four_bit = device == "cuda" and cfg.quantization == "nf4"
    if device == "cpu":
        report.log(CPU_NOTE)
    dtype = compute_dtype(cfg, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return device, four_bit, dtype


def compute_dtype(cfg: QLoRAConfig, device: str):
    """bf16 where the card supports it, fp16 where it does not, fp32 on the CPU."""
    import torch

    if device != "cuda":
        return torch.float32
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]


def load_base(cfg: QLoRAConfig, device: str, dtype: Any, four_bit: bool) -> tuple[Any, Any]:
    """Tokenizer and base model (4-bit NF4 + double quant on CUDA when asked)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.llm.engine import ModelSource, resolve_source

    where, gguf = resolve_source(ModelSource(cfg.base_model, gguf_file=cfg.gguf_file or None))
    extra = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    kwargs: dict[str, Any] = {"dtype": dtype, **extra}
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    if gguf:
        unmark_gguf(model)
    if not four_bit:
        model = model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def unmark_gguf(model: Any) -> None:
    """transformers dequantizes a GGUF file into ordinary tensors but leaves the model marked as
    GGUF-quantized, and Trainer refuses to fine-tune that ("quantization method does not support
    training"). The weights are plain, so drop the mark (4-bit NF4, if asked, is separate)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and "gguf" in str(quantizer.quantization_config.quant_method).lower():
        model.hf_quantizer = None
        model.is_quantized = False
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config


def add_lora(model: Any, cfg: QLoRAConfig, offload: bool = False) -> Any:
    """Wrap the base in a LoRA adapter. Unlike prepare_model_for_kbit_training, the embeddings
    and LM head are not upcast to fp32 (that alone costs ~2 GiB on an 8B model). Checkpointing is
    the reentrant kind: one autograd node per layer, where the non-reentrant kind runs a Python
    hook for every saved tensor (measurably slower when the step is launch-bound)."""
    from peft import LoraConfig, get_peft_model

    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()  # reentrant checkpoints need an input with grad
    if cfg.gradient_checkpointing or offload:
        model.config.use_cache = False
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_list(), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora)


# What torch.compile covers when layers are compiled: "layers" (each whole decoder layer: norms,
# attention, MLP, residuals, LoRA and the 4-bit matmuls) or "blocks" (attention and MLP only).
COMPILE_SCOPE = "layers"


def liger_config(compiled: bool, scope: str = COMPILE_SCOPE) -> dict[str, bool]:
    """Which Liger kernels to patch in: inside compiled code Inductor fuses RoPE, SwiGLU (and
    RMSNorm, when whole layers are compiled) itself; the fused cross-entropy always."""
    return {"rope": not compiled, "swiglu": not compiled,
            "rms_norm": not (compiled and scope == "layers"),
            "fused_linear_cross_entropy": True}


def apply_fused_kernels(model: Any, compiled: bool, scope: str = COMPILE_SCOPE) -> str:
    """Liger Kernel's Triton kernels on the (unwrapped) base, patched per instance: the fused
    linear cross-entropy that computes the loss chunk by chunk from the last hidden states, so
    the (tokens x vocabulary) logits never exist during training, and whichever of RMSNorm,
    SwiGLU and RoPE the compiled code does not already fuse (see `liger_config`)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:  # Liger would skip it
        return (f"fused kernels: Liger Kernel has none for {model.config.model_type}; plain "
                "transformers (the estimate assumed the fused loss: expect a higher peak)")
    chosen = liger_config(compiled, scope)
    _apply_liger_kernel_to_instance(model=model, **chosen)
    names = {"rms_norm": "RMSNorm", "swiglu": "SwiGLU", "rope": "RoPE",
             "fused_linear_cross_entropy": "fused linear cross-entropy"}
    return "fused kernels: Liger Kernel (" + ", ".join(
        label for key, label in names.items() if chosen[key]) + ")"


def decoder_layers(model: Any) -> list[Any]:
    """The decoder blocks of a (peft-wrapped) causal LM, found by their attention + MLP."""
    return [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]


def compile_blocks(model: Any, scope: str = COMPILE_SCOPE) -> str:
    """torch.compile each decoder layer (or only its attention and MLP), LoRA and the 4-bit
    matmuls inside: the 4-bit linears take the compilable NF4 path (tabs.qlora.nf4), so a
    layer's forward is a handful of generated kernels instead of hundreds of launches. The
    compiled code runs inside the eager checkpoint wrapper, so checkpointing and offloading are
    unchanged, and is shared by all layers (parameters are graph inputs)."""
    import torch

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # an architecture the compiler cannot handle trains eagerly (with a warning in the job's
    # output) instead of failing the run
    torch._dynamo.config.suppress_errors = True
    four_bit = 0
    if importlib.util.find_spec("bitsandbytes") is not None:
        from tabs.qlora.nf4 import compiled_nf4

        four_bit = compiled_nf4(model)
    layers = decoder_layers(model)
    for layer in layers:  # automatic dynamic shapes: batches vary in length
        if scope == "layers":
            layer.compile()
        else:
            layer.self_attn.compile()
            layer.mlp.compile()
    what = "decoder layers" if scope == "layers" else "attention and MLP of layers"
    return (f"compiled: {len(layers)} {what} (torch.compile)"
            + (f", {four_bit} 4-bit linears dequantized inside them" if four_bit else ""))


def prepare_model(cfg: QLoRAConfig, device: str, dtype: Any, four_bit: bool,
                  offload: bool, scope: str = COMPILE_SCOPE) -> tuple[Any, Any, list[str]]:
    """Tokenizer and trainable model exactly as the job trains it (the GPU bench calls this
    too), and log lines saying which speed and memory features are on."""
    from tabs.qlora.estimate import fused_kernels_usable

    tokenizer, model = load_base(cfg, device, dtype, four_bit)
    notes = []
    compiled = device == "cuda" and cfg.compile_layers == "auto"
    if fused_kernels_usable(cfg, device == "cuda"):
        notes.append(apply_fused_kernels(model, compiled, scope))
    elif cfg.fused_kernels == "auto" and device == "cuda":
        notes.append("fused kernels: liger-kernel is not installed, plain transformers")
    model = add_lora(model, cfg, offload)
    if compiled:
        notes.append(compile_blocks(model, scope))
    notes.append(activations_note(cfg, device, offload))
    return tokenizer, model, notes


def activations_note(cfg: QLoRAConfig, device: str, offload: bool) -> str:
    """Where the activations backward needs are kept, as the log says it (a CPU run has no
    GPU to keep them on)."""
    how = "checkpointed" if cfg.gradient_checkpointing else "kept"
    if device != "cuda":
        return f"activations: {how} in CPU RAM (no GPU on this machine)"
    return f"activations: {how}" + (", offloaded to CPU RAM" if offload else " on the GPU")


def eager() -> Any:
    """Run compiled blocks eagerly (evaluation, sampling: shapes change every call, and a
    recompile per shape would cost far more than it saves)."""
    import torch

    return torch.compiler.set_stance("force_eager")


def activation_context(offload: bool) -> Any:
    """Where the forward pass keeps what backward needs: pinned CPU RAM when offloading (with
    gradient checkpointing that is each layer's input; the recompute stays on the GPU)."""
    import contextlib

    import torch

    if not offload:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())


# ----- data ------------------------------------------------------------------------------------
def load_data(cfg: QLoRAConfig) -> tuple[list[list[dict]], list[list[dict]], list[str]]:
    """Train and eval conversations, and notes (skipped lines, split) for the log."""
    train_ds = data.load_records(cfg.train_file)
    notes = [train_ds.report().splitlines()[0]]
    notes += data.require_clean(train_ds, cfg.skip_bad_records)
    if cfg.eval_file:
        eval_ds = data.load_records(cfg.eval_file)
        notes += data.require_clean(eval_ds, cfg.skip_bad_records)
        return train_ds.conversations, eval_ds.conversations, notes
    train, ev = data.split(train_ds, cfg.eval_fraction, cfg.seed)
    notes.append(f"split: {len(train)} train, {len(ev)} eval examples (seed {cfg.seed})")
    return train, ev, notes


def make_collator(tokenizer: Any, packing: bool) -> Any:
    """Padding-free packing (one flat row with per-example position ids, which transformers
    turns into a block-diagonal mask) or plain padding with IGNORE labels."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=data.IGNORE)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=data.IGNORE,
                                  return_tensors="pt")


# ----- reporting -------------------------------------------------------------------------------
def report_targets(cfg: QLoRAConfig, run_dir: Path, report: Any) -> list[str]:
    """TensorBoard / W&B when asked and usable; says why not otherwise."""
    out = []
    if cfg.tensorboard:
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            out.append("tensorboard")
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")  # job process
            report.log(f"TensorBoard logs: {run_dir / 'tensorboard'}")
        else:
            report.log("TensorBoard asked for but not installed (pip install tensorboard)")
    if cfg.wandb:
        logged_in = os.environ.get("WANDB_API_KEY") or \
            "api.wandb.ai" in _read(Path.home() / ".netrc")
        if importlib.util.find_spec("wandb") and logged_in:
            out.append("wandb")
        else:
            report.log("Weights & Biases asked for but not configured (pip install wandb; "
                       "wandb login)")
    return out


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


# ----- the job ---------------------------------------------------------------------------------
def trainer_class() -> Any:
    """transformers' Trainer, with the forward pass under `activation_context` (backward then
    runs outside it, as save_on_cpu expects)."""
    from transformers import Trainer

    class StudioTrainer(Trainer):
        offload_activations = False

        def compute_loss(self, model, inputs, *args, **kwargs):
            with activation_context(self.offload_activations and model.training):
                return super().compute_loss(model, inputs, *args, **kwargs)

        def prediction_step(self, *args, **kwargs):
            with eager():  # eval batches vary in shape: no compiling for them
                return super().prediction_step(*args, **kwargs)

    return StudioTrainer


def training_args(cfg: QLoRAConfig, run_dir: Path, device: str, dtype: Any, has_eval: bool,
                  report_to: list[str], offload: bool = False) -> Any:
    import torch
    from transformers import TrainingArguments

    from tabs.qlora.estimate import fused_kernels_usable, optimizer_name

    cuda = device == "cuda"
    optim = optimizer_name(cfg, cuda, offload)
    fused = fused_kernels_usable(cfg, cuda)  # Trainer re-applies the same patch (idempotent)
    # and then skips the logits in evaluation too, where only the loss is needed
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"), per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accumulation, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.schedule, warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no",
        eval_steps=cfg.eval_steps or None, save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, save_total_limit=2,
        bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16,
        optim=optim,  # gradient checkpointing is enabled on the model in add_lora
        use_liger_kernel=fused,
        liger_kernel_config=liger_config(cuda and cfg.compile_layers == "auto") if fused else None,
        include_num_input_tokens_seen="non_padding", report_to=report_to or "none",
        seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=not cuda, remove_unused_columns=False, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=cuda, save_only_model=False)


def run(config: dict[str, Any], report: Any) -> None:
    """Fine-tune, report live, checkpoint, and finish with eval, samples and a run card."""
    cfg = QLoRAConfig.from_dict(config)
    run_dir = Path(report.run_dir)
    # The run trains on its own copy (made on the first attempt, reused on resume): a later
    # upload or edit elsewhere cannot change what this run's dataset hash describes.
    cfg.train_file = str(freeze_input(cfg.train_file, run_dir, label="Training data"))
    if cfg.eval_file:
        cfg.eval_file = str(freeze_input(cfg.eval_file, run_dir, label="Separate eval file"))
    device, four_bit, dtype = start_device(cfg, report)

    train_conv, eval_conv, notes = load_data(cfg)
    report.progress(0, None, "loading the base model")
    offload = wants_offload(cfg, device)
    tokenizer, model, kernel_notes = prepare_model(cfg, device, dtype, four_bit, offload)
    report.log(f"base {cfg.base_model}: {'4-bit NF4 + double quant' if four_bit else dtype}"
               f" on {device}")
    for note in kernel_notes:
        report.log(note)
    train_ex, cut = data.tokenize_all(tokenizer, train_conv, cfg.max_seq_length,
                                      cfg.train_on_prompt)
    eval_ex, _ = data.tokenize_all(tokenizer, eval_conv, cfg.max_seq_length, cfg.train_on_prompt)
    for note in notes + cut:
        report.log(note)
    if not train_ex:
        raise ValueError("no training example has answer tokens within max sequence length")
    trainable, total = model.get_nb_trainable_parameters()
    report.log(f"LoRA r{cfg.lora_r} on {cfg.target_modules}: {trainable / 1e6:.2f}M trainable "
               f"of {total / 1e6:.1f}M parameters")

    args = training_args(cfg, run_dir, device, dtype, bool(eval_ex),
                         report_targets(cfg, run_dir, report), offload)
    report.log(f"optimizer: {args.optim}")
    trainer = trainer_class()(model=model, args=args, train_dataset=train_ex,
                              eval_dataset=eval_ex or None,
                              data_collator=make_collator(tokenizer, cfg.packing),
                              callbacks=[trainer_callback(report, tokens_per_s=True)])
    trainer.offload_activations = offload
    adapter_dir = run_dir / "adapter"
    if train_and_save(trainer, tokenizer, adapter_dir, report):
        finish(cfg, report, trainer, tokenizer, eval_conv, eval_ex, device, four_bit,
               adapter_dir)


def train_and_save(trainer: Any, saver: Any, adapter_dir: Path, report: Any) -> bool:
    """Train (from the last checkpoint on a resume) and save the adapter with `saver` (the
    tokenizer or processor) next to it. False when Cancel stopped the run: the adapter so far
    is then the run's artifact."""
    trainer.train(resume_from_checkpoint=resume_from(report))
    trainer.model.save_pretrained(str(adapter_dir))
    saver.save_pretrained(str(adapter_dir))
    if report.should_stop():
        report.artifact(adapter_dir, kind="model", label="adapter so far")
        report.log(f"stopped at step {trainer.state.global_step}; adapter so far in "
                   f"{adapter_dir}")
        return False
    return True


def wants_offload(cfg: QLoRAConfig, device: str) -> bool:
    """The run's offload decision. The studio resolves 'auto' against its budget when it queues
    the job; a config that still says 'auto' is resolved here against the whole card."""
    if device != "cuda" or cfg.offload_activations == "off":
        return False
    if cfg.offload_activations == "on":
        return True
    import torch

    from tabs.qlora.estimate import load_arch, resolve_offload

    total = torch.cuda.get_device_properties(0).total_memory
    return resolve_offload(cfg, load_arch(cfg.base_model, cfg.gguf_file), total, True)


def finish(cfg: QLoRAConfig, report: Any, trainer: Any, tokenizer: Any,
           eval_conv: list[list[dict]], eval_ex: list[dict], device: str, four_bit: bool,
           adapter_dir: Path) -> None:
    """Final eval loss/perplexity, base-vs-adapter samples, results and the run card."""
    step = trainer.state.global_step
    results = first_results(trainer, device, four_bit)
    if eval_ex:
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h["step"] == step]
        ev = done[-1] if done else trainer.evaluate()  # not twice at the same step
        results["eval_loss"] = ev["eval_loss"]
        results["eval_ppl"] = math.exp(min(50.0, ev["eval_loss"]))
        if not done:
            report.metrics(step, eval_loss=ev["eval_loss"], eval_ppl=results["eval_ppl"])
        report.log(f"final eval loss {ev['eval_loss']:.4f}, perplexity {results['eval_ppl']:.2f}")
    results["vram_peak_gib"] = vram_peak_gib()
    samples = sample_pairs(trainer.model, tokenizer, eval_conv[:cfg.sample_prompts],
                           cfg.sample_tokens)
    save_results(cfg, report, adapter_dir, samples, results)


def first_results(trainer: Any, device: str, four_bit: bool) -> dict[str, Any]:
    """What results.json says of every finished adapter run before its evaluation."""
    return {"step": trainer.state.global_step, "device": device,
            "quantization": "nf4" if four_bit else "none (plain LoRA)",
            "train_loss": _last(trainer.state.log_history, "loss")}


def save_results(cfg: Any, report: Any, adapter_dir: Path, samples: list[dict[str, str]],
                 results: dict[str, Any]) -> None:
    """samples.json, results.json and the run card, offered as the run's artifacts; done."""
    run_dir = Path(report.run_dir)
    (run_dir / "samples.json").write_text(json.dumps(samples, indent=1))
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    write_run_card(adapter_dir, cfg, results)
    report.artifact(adapter_dir, kind="model", label="adapter")
    report.artifact(run_dir / "samples.json", kind="file", label="samples")
    report.artifact(run_dir / "results.json", kind="file", label="results")
    report.progress(results["step"], results["step"], "done")


def _last(history: list[dict], key: str) -> float | None:
    vals = [h[key] for h in history if key in h]
    return vals[-1] if vals else None


def sample_pairs(model: Any, tokenizer: Any, conversations: list[list[dict]],
                 max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy replies of the base (adapter disabled) and the adapter to the same prompts."""
    out = []
    for conv in conversations:
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        prompt = conv[:last]
        out.append({"prompt": prompt[-1]["content"], "expected": conv[last]["content"],
                    "adapter": generate(model, tokenizer, prompt, max_new_tokens)})
        with model.disable_adapter():
            out[-1]["base"] = generate(model, tokenizer, prompt, max_new_tokens)
    return out


def generate(model: Any, tokenizer: Any, messages: list[dict], max_new_tokens: int) -> str:
    """One greedy reply, decoded without special tokens."""
    import torch

    ids = tokenizer(data.render(tokenizer, messages, add_generation_prompt=True),
                    add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = ids.to(model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), eager():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, use_cache=True)
    model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def write_run_card(adapter_dir: Path, cfg: QLoRAConfig, results: dict[str, Any]) -> Path:
    """run_card.json + RUN_CARD.md next to the adapter: base, data hash, settings, metrics,
    library versions, so the adapter can be reproduced and trusted."""
    from studio.jobs import library_versions

    versions = library_versions()
    card = {"base_model": cfg.base_model, "gguf_file": cfg.gguf_file,
            "dataset_hash": cfg.dataset_hash, "train_file": Path(cfg.train_file).name,
            "settings": cfg.to_dict(), "metrics": results, "versions": versions}
    (adapter_dir / "run_card.json").write_text(json.dumps(card, indent=1, default=str))
    lines = [f"# LoRA adapter for {cfg.base_model}", "",
             f"- data: {Path(cfg.train_file).name} (hash {cfg.dataset_hash or 'n/a'})",
             f"- LoRA r{cfg.lora_r}, alpha {cfg.lora_alpha}, targets {cfg.target_modules}",
             f"- base weights: {results.get('quantization')}, device {results.get('device')}",
             f"- steps {results.get('step')}, eval loss {results.get('eval_loss')}, "
             f"perplexity {results.get('eval_ppl')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    (adapter_dir / "RUN_CARD.md").write_text("\n".join(lines) + "\n")
    return adapter_dir / "run_card.json"

