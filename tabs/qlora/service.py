"""What the QLoRA tab's buttons do, without Gradio: validate data, estimate memory, submit the
job, read samples, export the adapter (optionally merged) and chat with it through the shared
engine."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.jobs import ALL
from studio.safety import check_model_source, stage_upload
from tabs.qlora import dataset as data
from tabs.qlora.config import QLoRAConfig
from tabs.qlora.estimate import Estimate, estimate_for_config, load_arch, resolve_offload

KIND = "qlora"
ENTRY = "tabs.qlora.train:run"
CPU_UI_NOTE = ("This machine has no CUDA GPU: training runs plain LoRA on float32 weights "
               "(4-bit NF4 needs bitsandbytes on CUDA). Fine for small bases such as SmolLM2.")


def default_base(studio: Any) -> tuple[str, str]:
    """(source, gguf file) of the profile's QLoRA base, or empty strings when it has none."""
    choice = studio.choices.get("qlora_base")
    if choice is None or choice.source is None:
        return "", ""
    return choice.source, choice.gguf_file or ""


def is_cuda(studio: Any) -> bool:
    return getattr(studio.probe, "device", "cpu") == "cuda"


def load_tokenizer(source: str, gguf_file: str = "") -> Any:
    """Only the tokenizer of the base (cheap), for previews and token counts."""
    from transformers import AutoTokenizer

    from studio.llm.engine import ModelSource, resolve_source

    where, gguf = resolve_source(ModelSource(source, gguf_file=gguf_file or None))
    try:
        return AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load the tokenizer of {source}: {e}") from e


@dataclass
class Validation:
    """What "Check data" shows: the report, a rendered preview and the length histogram."""

    dataset: data.Dataset
    preview: str
    histogram: Any  # pandas DataFrame for gr.BarPlot
    truncated: int
    max_seq_length: int

    def markdown(self) -> str:
        """One line per fact (a list: Markdown joins plain lines into one paragraph)."""
        ds = self.dataset
        lines = [f"- **Shape:** {data.SHAPE_TITLES[ds.shape]}",
                 f"- **Records:** {len(ds.conversations)} usable of {ds.total}",
                 f"- **Longer than {self.max_seq_length} tokens (would be cut):** "
                 f"{self.truncated}", ""]
        if ds.problems:
            lines.append(f"**{len(ds.problems)} malformed record(s)** — fix the file, or tick "
                         "'Skip malformed records' to train without them:")
            lines += [f"- {p}" for p in ds.problems[:30]]
            if len(ds.problems) > 30:
                lines.append(f"- ... and {len(ds.problems) - 30} more")
        return "\n".join(lines)


def validate(path: str, source: str, gguf_file: str, max_seq_length: int) -> Validation:
    """Read and check a data file against the base's tokenizer and chat template."""
    check_model_source(source, label="Base model")
    ds = data.load_records(path)
    tok = load_tokenizer(source, gguf_file)
    lengths = data.token_lengths(tok, ds.conversations)
    hist, over = data.length_histogram(lengths, max_seq_length)
    return Validation(dataset=ds, preview=data.preview(tok, ds), histogram=hist, truncated=over,
                      max_seq_length=max_seq_length)


def estimate(studio: Any, cfg: QLoRAConfig) -> Estimate:
    """Will it fit? The estimate for these settings against the studio's budget."""
    arch = load_arch(cfg.base_model, cfg.gguf_file)
    return estimate_for_config(cfg, arch, studio.models.budget, is_cuda(studio))


def submit(studio: Any, cfg: QLoRAConfig, owner: Any = ALL) -> str:
    """Check data and memory up front (errors now, not minutes into a job), then queue the run
    for `owner` (``studio.sessions.owner_of``)."""
    from studio.jobs import hash_files

    cfg.validate()
    from studio.hub import require_local  # a hub base not on disk: the Models tab, not the job

    require_local(studio, cfg.base_model, "The base model")
    files = [Path(cfg.train_file)] + ([Path(cfg.eval_file)] if cfg.eval_file else [])
    for f in files:
        data.require_clean(data.load_records(f), cfg.skip_bad_records)
    cfg.dataset_hash = hash_files(files)
    vram = 0
    if is_cuda(studio):
        arch = load_arch(cfg.base_model, cfg.gguf_file)
        if cfg.offload_activations == "auto":  # the job runs what "will it fit?" said
            off = resolve_offload(cfg, arch, studio.models.budget, True)
            cfg.offload_activations = "on" if off else "off"
        est = estimate_for_config(cfg, arch, studio.models.budget, True)
        if not est.fits:
            raise ValueError("this will not fit: " + est.describe())
        vram = est.total
    title = (f"QLoRA {Path(cfg.base_model).name} r{cfg.lora_r} on {Path(cfg.train_file).name}")
    return studio.jobs.submit(kind=KIND, entry=ENTRY, config=cfg.to_dict(), title=title,
                              vram_bytes=vram, dataset_hash=cfg.dataset_hash, seed=cfg.seed,
                              owner=owner)


def finished_runs(studio: Any, owner: Any = ALL) -> list[str]:
    """Run ids of `owner` (and shared ones) that have an adapter folder (finished or cancelled
    with a saved adapter)."""
    return [v.id for v in studio.jobs.list_runs(KIND, owner=owner)
            if (Path(v.run_dir) / "adapter" / "adapter_config.json").is_file()]


def run_paths(studio: Any, run_id: str) -> tuple[Path, QLoRAConfig]:
    if not run_id:
        raise ValueError("pick a run first")
    run_dir = studio.jobs.run_dir(run_id)
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise ValueError(f"run {run_id} has no adapter yet")
    cfg = QLoRAConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    return run_dir, cfg


def samples_table(studio: Any, run_id: str) -> tuple[list[list[str]], dict[str, Any]]:
    """Rows (prompt, expected, base, adapter) from the run's eval samples, and its results."""
    run_dir, _ = run_paths(studio, run_id)
    if not (run_dir / "samples.json").is_file():
        raise ValueError(f"run {run_id} stopped before its evaluation; resume it to finish")
    samples = json.loads((run_dir / "samples.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    rows = [[s["prompt"], s["expected"], s["base"], s["adapter"]] for s in samples]
    return rows, results


def export(studio: Any, run_id: str, merge_fp16: bool = False) -> Path:
    """Copy the adapter (safetensors + run card) to exports/qlora/<run>; optionally also the
    base with the adapter merged in, in fp16."""
    run_dir, cfg = run_paths(studio, run_id)
    dest = studio.settings.exports_dir / "qlora" / run_id
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run_dir / "adapter", dest / "adapter")
    if merge_fp16:
        merge(cfg, run_dir / "adapter", dest / "merged-fp16")
    return dest


GGUF_ENTRY = "tabs.qlora.service:gguf_job"


def submit_gguf(studio: Any, run_id: str, qtype: str, owner: Any = ALL) -> str:
    """Queue the GGUF export of a run's base + adapter (merged) as a job of its own: the merge
    and the quantization take minutes and the RAM of a model, so they leave the request. An
    architecture the export cannot write is refused now, with the reason."""
    from studio.llm.engine import ModelSource, resolve_source
    from studio.llm.gguf_export import TYPES, plan_for

    if qtype not in TYPES:
        raise ValueError(f"GGUF type must be one of {', '.join(TYPES)}, not {qtype!r}")
    run_dir, cfg = run_paths(studio, run_id)
    where, gguf = resolve_source(ModelSource(cfg.base_model, gguf_file=cfg.gguf_file or None))
    plan_for(where, gguf)  # ExportRefused (a ValueError) names what is not supported
    config = {"run_id": run_id, "adapter": str(run_dir / "adapter"), "base": where,
              "gguf_file": gguf or "", "qtype": qtype}
    return studio.jobs.submit(kind=KIND, entry=GGUF_ENTRY, config=config, owner=owner,
                              title=f"GGUF {qtype} of {run_id} ({Path(cfg.base_model).name})")


def gguf_jobs(studio: Any, run_id: str, owner: Any = ALL) -> list[str]:
    """The GGUF export runs of training run `run_id` that `owner` may see, newest first."""
    return [v.id for v in studio.jobs.list_runs(KIND, owner=owner)
            if v.title.startswith("GGUF ") and f" of {run_id} " in v.title]


def gguf_job(config: dict[str, Any], report: Any) -> None:
    """The export job: base + adapter merged, streamed tensor by tensor into
    ``<run>/model-<type>.gguf``, an Ollama Modelfile beside it, both in the run's Outputs."""
    from studio.config import format_bytes
    from studio.llm.gguf_export import export_gguf

    run_dir = Path(report.run_dir)
    qtype = config["qtype"]
    out = run_dir / f"model-{qtype.lower()}.gguf"
    report.log(f"GGUF export ({qtype}) of run {config['run_id']}: base {config['base']}"
               + (f" / {config['gguf_file']}" if config["gguf_file"] else ""))
    step = {"next": 0.1}

    def progress(done: int, total: int, name: str) -> None:
        report.progress(done, total, f"tensor {done}/{total}")
        if done / total >= step["next"] or done == total:
            report.log(f"written {done}/{total} tensors ({done * 100 // total} %), last {name}")
            step["next"] += 0.1

    try:
        res = export_gguf(config["base"], out, gguf_file=config["gguf_file"] or None,
                          adapter_dir=config["adapter"], qtype=qtype, progress=progress,
                          should_stop=report.should_stop)
    except InterruptedError:
        report.log("stopped: the half-written file was removed")
        return
    for note in res.notes:
        report.log(note)
    modelfile = run_dir / "Modelfile"
    modelfile.write_text(f"FROM ./{out.name}\n")
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    report.log(f"wrote {out.name}: {format_bytes(res.size)}, {res.qtype} ({res.arch}, "
               f"{res.tensors} tensors) in {res.seconds:.1f} s; peak RAM of this job "
               f"{format_bytes(peak)}")
    report.log(f"use it: llama.cpp `llama-cli -m {out.name} -cnv`; Ollama: put {out.name} and "
               "Modelfile in one folder, then `ollama create my-model -f Modelfile` and "
               "`ollama run my-model` (the chat template is inside the file)")
    report.artifact(out, kind="model", label=f"GGUF {qtype}")
    report.artifact(modelfile, kind="file", label="Ollama Modelfile")
    report.progress(res.tensors, res.tensors, "done")


def merge(cfg: QLoRAConfig, adapter_dir: Path, out: Path) -> Path:
    """Base in fp16 + adapter merged into its weights, saved as safetensors (CPU, RAM-bound)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.llm.engine import ModelSource, resolve_source

    where, gguf = resolve_source(ModelSource(cfg.base_model, gguf_file=cfg.gguf_file or None))
    kwargs: dict[str, Any] = {}
    if gguf:
        # A GGUF base is unpacked into plain fp16 tensors first: transformers can keep GGUF
        # blocks packed, and a model marked GGUF-quantized refuses save_pretrained
        # ("quantized with gguf and is not serializable").
        from transformers import GgufConfig

        kwargs = {"gguf_file": gguf, "quantization_config": GgufConfig(dequantize=True)}
    base = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float16, **kwargs)
    if gguf:
        from tabs.qlora.train import unmark_gguf

        unmark_gguf(base)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    load_tokenizer(cfg.base_model, cfg.gguf_file).save_pretrained(str(out))
    return out


def chat_engine(studio: Any, run_id: str) -> Any:
    """An engine of this request's own for the run's base + adapter. The base is loaded once
    by the model manager (one key for every run of that base); the engine switches the loaded
    model to its adapter under the model's lock for each reply, so two sessions chatting with
    different runs each get their own adapter's answer."""
    from studio.llm import ModelSource, TransformersEngine

    run_dir, cfg = run_paths(studio, run_id)
    src = ModelSource(cfg.base_model, quantization="auto", gguf_file=cfg.gguf_file or None,
                      title=f"{Path(cfg.base_model).name} (QLoRA base)")
    # the fast decoder: the adapter runs on top of the base inside its CUDA graphs (int4: in
    # the int4 layers themselves, `studio.llm.int4.attach_lora`)
    return TransformersEngine(studio, src, adapter=str(run_dir / "adapter"))


def chat(studio: Any, run_id: str, history: list[dict], message: str,
         max_new_tokens: int = 256) -> str:
    """One reply of the base + the run's adapter to `message` after `history`."""
    from studio.llm import GenerationSettings

    if not message.strip():
        raise ValueError("type a message")
    engine = chat_engine(studio, run_id)
    msgs = [{"role": m["role"], "content": m["content"]} for m in history] + \
        [{"role": "user", "content": message}]
    # an adapter that fails to attach is taken back out by the engine (any tab's chat), so the
    # shared base stays one clean copy
    return engine.chat(msgs, GenerationSettings(temperature=0.0,
                                                max_new_tokens=max_new_tokens)).text


def store_upload(studio: Any, path: str | None) -> str:
    """Copy an uploaded file under the studio home so the job can still read it later."""
    if not path:
        return ""
    src = Path(path)
    root = Path(studio.settings.uploads_dir) / "qlora"
    if src.resolve().is_relative_to(root.resolve()) and src.is_file():
        return str(src)  # already staged (a script passing back a path we gave it)
    # Named by content: a second file called train.jsonl never replaces the first one, so a
    # queued or resumed run keeps the data its dataset hash describes.
    return str(stage_upload(src, root, label="Training data"))


def planned_steps(n_train: int, cfg: QLoRAConfig) -> int:
    """Optimizer steps the run will take, as transformers' Trainer counts them: max steps when
    set, else epochs x ceil(batches per epoch / gradient accumulation)."""
    import math

    if cfg.max_steps > 0:
        return int(cfg.max_steps)
    batches = math.ceil(n_train / max(1, cfg.micro_batch_size))
    per_epoch = max(1, math.ceil(batches / max(1, cfg.grad_accumulation)))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def plan_text(cfg: QLoRAConfig) -> str:
    """What the run will do, shown before Start: examples, steps, and a warning when the
    warm-up is as long as the run (the learning rate would never reach its set value)."""
    if not cfg.train_file:
        return ""
    ds = data.load_records(cfg.train_file)
    if not ds.conversations:
        return "**Plan:** the training file has no usable records."
    if cfg.eval_file:
        n_train = len(ds.conversations)
    else:
        n_train = len(data.split(ds, cfg.eval_fraction, cfg.seed)[0])
    steps = planned_steps(n_train, cfg)
    per_step = cfg.micro_batch_size * cfg.grad_accumulation
    how = (f"max steps {cfg.max_steps}" if cfg.max_steps > 0
           else f"{cfg.epochs:g} epoch(s) of {n_train} examples, {per_step} per step")
    text = f"**Plan:** {steps} optimizer step(s) ({how})."
    if cfg.warmup_steps >= steps:
        text += (f"  \n⚠️ **Warm-up ({cfg.warmup_steps} steps) is not shorter than the run "
                 f"({steps} steps):** the learning rate never reaches {cfg.learning_rate:g}. "
                 "Lower the warm-up steps, or train for more epochs / steps.")
    return text
