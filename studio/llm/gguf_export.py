"""GGUF export of a base model with a LoRA adapter merged into its weights, for llama.cpp and
Ollama. Built from ggml's own gguf-py pieces (`GGUFWriter`, the tensor-name map, `SpecialVocab`,
`LlamaHfVocab`, `quants.quantize`); llama.cpp's converter script is not shipped with it.

Streaming: the base is read one tensor at a time (safetensors `safe_open`, or `GGUFReader`'s
memory map for a .gguf base), the adapter's delta ``scale * B @ A`` is added in float32, the
result is quantized and written, and nothing else of the model is held. Peak memory is about one
float32 copy of the largest tensor (the token embedding) plus the adapter, not the model.

Layout as llama.cpp expects it: Llama's q/k rows permuted for its rotary kernel (a .gguf base is
already permuted; its adapter delta is permuted the same way), Llama 3's rope scaling as a
``rope_freqs`` tensor, 1-D tensors in F32, the tokenizer as ``tokenizer.ggml.*`` keys (copied from
a .gguf base; built from ``tokenizer.json`` for a model folder) and the chat template. Architectures
other than the Llama family (Llama 2/3.x, SmolLM, Mistral) and Qwen2 are refused by name.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

TYPES = ("Q8_0", "F16")  # what the studio offers; BF16 also works here
SUPPORTED = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}  # HF model_type -> arch

# llama.cpp names the BPE pre-tokenizer by hashing the ids of this text (convert_hf_to_gguf.py)
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL")
_KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
}


class ExportRefused(ValueError):
    """The model cannot be exported to GGUF here; the message says why in plain words."""


@dataclass
class ExportResult:
    """What was written: the file, its size and type, and notes for the log."""

    path: Path
    qtype: str
    size: int
    tensors: int
    seconds: float
    arch: str
    notes: list[str] = field(default_factory=list)


# ----- the adapter -------------------------------------------------------------------------------
def adapter_deltas(adapter_dir: Path | None) -> tuple[dict[str, Any], list[str]]:
    """``{hf weight name: (A, B, scale)}`` of a PEFT LoRA adapter folder (float32 tensors), and
    notes. What cannot be merged as a plain low-rank delta is refused."""
    import torch
    from safetensors.torch import load_file

    if adapter_dir is None:
        return {}, []
    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExportRefused(f"the adapter is {cfg.get('peft_type')}, not LoRA: only LoRA "
                            "adapters are merged into a GGUF export")
    if cfg.get("use_dora"):
        raise ExportRefused("DoRA adapters are not merged into a GGUF export (only plain LoRA)")
    if cfg.get("modules_to_save"):
        raise ExportRefused("the adapter trains whole modules "
                            f"({', '.join(cfg['modules_to_save'])}): not merged into a GGUF here")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportRefused(f"no adapter_model.safetensors in {adapter_dir} (only safetensors "
                            "adapters are read)")
    state = load_file(str(weights))
    r, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    out: dict[str, Any] = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                raise ExportRefused(f"the adapter holds {key}, which is not a LoRA matrix; "
                                    "not merged into a GGUF here")
            continue
        if "lora_embedding" in key:
            raise ExportRefused("LoRA on embeddings is not merged into a GGUF here")
        module = key.split(".lora_A.")[0]
        b = state[key.replace(".lora_A.", ".lora_B.")]
        name = module.removeprefix("base_model.model.")
        rank = _pattern(ranks, name, r)
        scale = _pattern(alphas, name, alpha) / (rank ** 0.5 if cfg.get("use_rslora") else rank)
        out[name + ".weight"] = (a.to(torch.float32), b.to(torch.float32), float(scale),
                                 fan_in_fan_out)
    return out, [f"adapter: LoRA r{r}, alpha {alpha:g} on {len(out)} weight(s)"]


def _pattern(patterns: dict[str, Any], name: str, default: float) -> float:
    """PEFT's rank/alpha pattern: a key that matches the end of the module's name."""
    for pat, value in patterns.items():
        if re.match(rf"(.*\.)?{pat}$", name):
            return float(value)
    return float(default)


def _delta(entry: Any) -> Any:
    a, b, scale, fan_in_fan_out = entry
    d = (b @ a) * scale
    return d.T if fan_in_fan_out else d


# ----- layout ------------------------------------------------------------------------------------
def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Llama's q/k rows from HF's rotate-half order into the interleaved pairs llama.cpp's rope
    kernel expects (what transformers' GGUF loader undoes)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama3_rope_factors(head_dim: int, theta: float, rope: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1+'s rope scaling (llama.cpp's ``rope_freqs``): 1 for
    high frequencies, `factor` for low ones, a smooth blend between."""
    factor = float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    blend = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, blend))
    return out.astype(np.float32)


def _ggml_type(qtype: str, shape: tuple[int, ...]) -> Any:
    """The stored type of one tensor: 1-D (norms, biases) in F32 as llama.cpp keeps them; a
    Q8_0 row that is not a multiple of 32 falls back to F16."""
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return T.F32
    if qtype == "Q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0:
        return T.Q8_0
    return T.BF16 if qtype == "BF16" else T.F16


def _nbytes(shape: tuple[int, ...], ttype: Any) -> tuple[tuple[int, ...], Any, int]:
    """(shape as the writer takes it, numpy dtype, bytes) for `ttype`."""
    import gguf

    T = gguf.GGMLQuantizationType
    if ttype == T.F32:
        return shape, np.float32, int(np.prod(shape)) * 4
    if ttype == T.F16:
        return shape, np.float16, int(np.prod(shape)) * 2
    byte_shape = gguf.quant_shape_to_byte_shape(shape, ttype)
    return byte_shape, np.uint8, int(np.prod(byte_shape))


# ----- sources -----------------------------------------------------------------------------------
@dataclass
class _Plan:
    arch: str  # gguf arch name, e.g. "llama"
    n_head: int
    n_head_kv: int
    n_layers: int
    tensors: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]  # gguf name, shape, load
    write_metadata: Callable[[Any], list[str]]  # (writer) -> notes
    from_gguf: bool
    name: str


def _hf_plan(folder: Path) -> _Plan:
    """A model folder: config.json + safetensors (shards or one file) + tokenizer files."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED:
        raise ExportRefused(_refusal(model_type))
    arch_enum = getattr(gguf.MODEL_ARCH, SUPPORTED[model_type])
    arch = gguf.MODEL_ARCH_NAMES[arch_enum]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportRefused(f"{folder} has no .safetensors weights (pickled .bin weights are not "
                            "read: they can run code)")
    n_layers = int(config.num_hidden_layers)
    tmap = gguf.get_tensor_name_map(arch_enum, n_layers)
    n_head = int(config.num_attention_heads)
    n_head_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors = []
    for f in files:
        with safe_open(str(f), "pt") as sf:
            for hf_name in sf.keys():
                tied_head = tied and hf_name == "lm_head.weight"
                if hf_name.endswith("rotary_emb.inv_freq") or tied_head:
                    continue
                name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ExportRefused(f"weight {hf_name} has no GGUF name for {arch}: this "
                                        f"{model_type} variant is not exported")
                shape = tuple(sf.get_slice(hf_name).get_shape())
                tensors.append((name, shape, _safetensor_loader(f, hf_name), hf_name))
    rope = _rope_of(config)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    plan_tensors = [(n, s, ld) for n, s, ld, _ in tensors]
    if arch == "llama" and rope.get("rope_type") == "llama3":
        factors = llama3_rope_factors(head_dim, float(rope["rope_theta"]), rope)
        plan_tensors.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                             factors.shape, lambda f=factors: f))

    def write_metadata(w: Any) -> list[str]:
        w.add_name(folder.name)
        w.add_context_length(int(config.max_position_embeddings))
        w.add_embedding_length(int(config.hidden_size))
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(config.intermediate_size))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        w.add_rope_freq_base(float(rope["rope_theta"]))
        w.add_vocab_size(int(config.vocab_size))
        if arch == "llama":
            w.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        kind = rope.get("rope_type") or "default"
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(rope["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        elif kind not in ("default", "llama3"):
            raise ExportRefused(f"rope scaling {kind!r} is not exported to GGUF here")
        return write_hf_tokenizer(w, folder, int(config.vocab_size))

    return _Plan(arch, n_head, n_head_kv, n_layers, plan_tensors, write_metadata, False,
                 folder.name)


def _rope_of(config: Any) -> dict[str, Any]:
    """Rope settings across transformers versions (``rope_parameters`` or ``rope_scaling``)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
                or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    return rope


def _safetensor_loader(path: Path, name: str) -> Callable[[], Any]:
    def load() -> Any:
        import torch
        from safetensors import safe_open

        with safe_open(str(path), "pt") as sf:
            return sf.get_tensor(name).to(torch.float32)

    return load


def _refusal(model_type: str) -> str:
    return (f"GGUF export supports the Llama family (Llama 2/3.x, SmolLM, Mistral) and Qwen2; "
            f"this model is {model_type!r}. Export the merged fp16 weights instead and convert "
            "them with llama.cpp's convert_hf_to_gguf.py.")


_SKIP_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def _gguf_plan(path: Path) -> _Plan:
    """A .gguf base: tensors dequantized one at a time from the memory map, and every metadata
    key (tokenizer, chat template, hyperparameters) copied as the source has it."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = str(reader.fields["general.architecture"].contents())
    if arch not in ("llama", "qwen2"):
        raise ExportRefused(_refusal(arch))

    def kv(key: str, default: Any = None) -> Any:
        f = reader.fields.get(f"{arch}.{key}")
        return f.contents() if f is not None else default

    n_layers = int(kv("block_count"))
    n_head = int(kv("attention.head_count"))
    n_head_kv = int(kv("attention.head_count_kv", n_head))
    tensors = []
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # numpy order: rows first
        tensors.append((t.name, shape, _gguf_loader(t, shape)))

    def write_metadata(w: Any) -> list[str]:
        for key, f in reader.fields.items():
            if key.startswith("GGUF.") or key in _SKIP_KEYS:
                continue
            vtype = f.types[0]
            sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, f.contents(), vtype, sub_type=sub)
        return ["tokenizer and chat template: copied from the GGUF base"]

    return _Plan(arch, n_head, n_head_kv, n_layers, tensors, write_metadata, True, path.stem)


def _gguf_loader(t: Any, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from gguf.quants import dequantize

        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)

    return load


# ----- tokenizer of a model folder ---------------------------------------------------------------
def write_hf_tokenizer(w: Any, folder: Path, n_vocab: int) -> list[str]:
    """``tokenizer.ggml.*`` from a folder's tokenizer files: byte-level BPE (Llama 3, SmolLM,
    Qwen2) as llama.cpp's "gpt2" model, SentencePiece-style BPE with byte fallback (Llama 2,
    Mistral) through gguf-py's `LlamaHfVocab`; special ids, merges and the chat template through
    `SpecialVocab`."""
    import gguf

    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        raise ExportRefused(f"{folder} has no tokenizer.json: the GGUF needs the tokenizer")
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    notes = []
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        tokens, types, pre, how = _bpe_vocab(folder, tj, n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        notes.append(f"tokenizer: byte-level BPE, {len(tokens)} tokens, pre-tokenizer {pre!r} "
                     f"({how})")
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    elif model.get("type") == "BPE":
        vocab = gguf.LlamaHfVocab(folder)
        tokens, scores, types = [], [], []
        for text, score, ttype in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(ttype)
        while len(tokens) < n_vocab:  # the embedding may be padded past the tokenizer
            tokens.append(f"[PAD{len(tokens)}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        notes.append(f"tokenizer: SentencePiece-style BPE, {len(tokens)} tokens")
        special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=len(tokens))
    else:
        raise ExportRefused(f"tokenizer model {model.get('type')!r} is not exported to GGUF "
                            "here (byte-level BPE and SentencePiece-style BPE are)")
    special.add_to_gguf(w, quiet=True)
    if special.chat_template is None:
        notes.append("no chat template in the tokenizer files: llama.cpp will use its default")
    return notes


def _bpe_vocab(folder: Path, tj: dict, n_vocab: int) -> tuple[list[str], list[int], str, str]:
    """Tokens and types as llama.cpp's converter lays out a byte-level BPE vocabulary, and the
    pre-tokenizer's name (by llama.cpp's hash of a test text, else by the split regex)."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    vocab = tok.get_vocab()
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(max(n_vocab, len(vocab))):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = reverse[i]
        if text in added:
            special = decoder[i].special if i in decoder else False
            looks = text.startswith("<|") and text.endswith("|>")
            types.append(gguf.TokenType.CONTROL if special or looks
                         else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)
    digest = sha256(str(tok.encode(_CHECK_TEXT)).encode()).hexdigest()
    if digest in _KNOWN_PRE:
        return tokens, types, _KNOWN_PRE[digest], "recognised by llama.cpp's check hash"
    return tokens, types, *_pre_by_regex(tj)


def _pre_by_regex(tj: dict) -> tuple[str, str]:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    for p in parts:
        regex = (p.get("pattern") or {}).get("Regex") if p.get("type") == "Split" else None
        if regex:
            for name in ("llama-bpe", "qwen2"):
                if regex == GGUF_PRE_TOKENIZER_SPLITS[name]:
                    return name, "by its split regex"
            return "default", "split regex unknown to llama.cpp: its default is used"
    if any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts):
        return "gpt-2", "GPT-2's byte-level split"
    return "default", "no split regex: llama.cpp's default"


# ----- the export --------------------------------------------------------------------------------
def plan_for(base: str | Path, gguf_file: str | None = None) -> _Plan:
    """What would be written for `base` (a model folder, a folder + GGUF file name, or a .gguf
    file): refuses unsupported architectures before any weight is read."""
    path = Path(base).expanduser()
    if gguf_file:
        path = path / gguf_file
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _gguf_plan(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _hf_plan(path)
    raise ExportRefused(f"{base} is not a local model folder or .gguf file (GGUF export reads "
                        "the base from disk)")


def export_gguf(base: str | Path, out: str | Path, gguf_file: str | None = None,
                adapter_dir: str | Path | None = None, qtype: str = "Q8_0",
                progress: Callable[[int, int, str], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> ExportResult:
    """Write `base` + the LoRA adapter in `adapter_dir` (merged) to the GGUF file `out`, tensor
    by tensor, as `qtype` (Q8_0, F16 or BF16; 1-D tensors stay F32). `progress(done, total,
    name)` after each tensor; when `should_stop()` turns True the half-written file is removed
    and InterruptedError raised. The file appears under its name only once complete."""
    import gguf

    qtype = qtype.upper()
    if qtype not in ("Q8_0", "F16", "BF16"):
        raise ExportRefused(f"GGUF type {qtype!r}: choose Q8_0, F16 or BF16")
    t0 = time.perf_counter()
    plan = plan_for(base, gguf_file)
    deltas, notes = adapter_deltas(Path(adapter_dir) if adapter_dir else None)
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == plan.arch)
    tmap = gguf.get_tensor_name_map(arch_enum, plan.n_layers)
    by_name: dict[str, Any] = {}
    for hf_name, entry in deltas.items():
        name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportRefused(f"the adapter changes {hf_name}, which has no GGUF name for "
                                f"{plan.arch}")
        by_name[name] = entry
    present = {n for n, _, _ in plan.tensors}
    missing = sorted(set(by_name) - present)
    if missing:
        raise ExportRefused(f"the adapter changes {', '.join(missing[:3])}, which the base does "
                            "not have: it was trained on another model")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(str(part), plan.arch)
    try:
        notes += plan.write_metadata(w)
        file_type = {"Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "BF16": gguf.LlamaFileType.MOSTLY_BF16}[qtype]
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        layout = []
        for name, shape, load in plan.tensors:
            ttype = _ggml_type(qtype, shape)
            wshape, dtype, nbytes = _nbytes(shape, ttype)
            w.add_tensor_info(name, wshape, np.dtype(dtype), nbytes, raw_dtype=ttype)
            layout.append((name, shape, load, ttype))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, (name, _shape, load, ttype) in enumerate(layout):
            if should_stop is not None and should_stop():
                raise InterruptedError("GGUF export stopped on request")
            w.write_tensor_data(_merged_tensor(plan, name, load, by_name.get(name), ttype))
            if progress is not None:
                progress(i + 1, len(layout), name)
        w.close()
        part.replace(out)
    except BaseException:
        w.close()
        part.unlink(missing_ok=True)
        raise
    merged = len(by_name)
    notes.append(f"merged the adapter into {merged} weight(s)" if merged else
                 "no adapter: the base alone")
    return ExportResult(path=out, qtype=qtype, size=out.stat().st_size, tensors=len(layout),
                        seconds=time.perf_counter() - t0, arch=plan.arch, notes=notes)


def _merged_tensor(plan: _Plan, name: str, load: Callable[[], Any], delta: Any,
                   ttype: Any) -> np.ndarray:
    """One tensor as written: base (+ delta) in float32, q/k permuted for a Llama-arch folder
    base, quantized to `ttype`."""
    import gguf
    import torch

    w = load()
    if isinstance(w, np.ndarray):
        w = torch.from_numpy(w)
    w = w.to(torch.float32)
    if delta is not None:
        d = _delta(delta)
        if tuple(d.shape) != tuple(w.shape):
            raise ExportRefused(f"the adapter's {name} is {tuple(d.shape)}, the base's "
                                f"{tuple(w.shape)}: it was trained on another model")
        if plan.arch == "llama" and plan.from_gguf:  # the base is permuted already: so is d
            d = _permute_if_qk(plan, name, d)
        w = w + d
    if plan.arch == "llama" and not plan.from_gguf:
        w = _permute_if_qk(plan, name, w)
    arr = w.numpy()
    return gguf.quants.quantize(arr, ttype) if ttype != gguf.GGMLQuantizationType.F32 else arr


def _permute_if_qk(plan: _Plan, name: str, w: Any) -> Any:
    import torch

    if name.endswith(("attn_q.weight", "attn_q.bias")):
        return torch.from_numpy(permute_rows(w.numpy(), plan.n_head))
    if name.endswith(("attn_k.weight", "attn_k.bias")):
        return torch.from_numpy(permute_rows(w.numpy(), plan.n_head_kv))
    return w


def tensor_names(path: str | Path) -> Iterator[str]:
    """Names of the tensors in a GGUF file (tests and the log)."""
    import gguf

    for t in gguf.GGUFReader(str(path)).tensors:
        yield t.name
