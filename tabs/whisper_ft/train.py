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
from dataclasses import dataclass, field
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

# Whisper sizes when the base's config cannot be read (a hub id on an offline machine):
# (d_model, encoder layers, decoder layers, vocabulary).
ARCHS = {"tiny": (384, 4, 4, 51865), "base": (512, 6, 6, 51865), "small": (768, 12, 12, 51865),
         "medium": (1024, 24, 24, 51865), "large": (1280, 32, 32, 51866),
         "turbo": (1280, 32, 4, 51866)}
FRAMES = 1500  # encoder positions of one 30 s window
LABEL_TOKENS = 128  # label length the estimate assumes (a 30 s piece rarely has more)
MARGIN = 0.88  # share of the budget the estimate may fill (allocator slack, workspaces)


# ----- memory ----------------------------------------------------------------------------------
@dataclass
class Arch:
    d: int
    enc_layers: int
    dec_layers: int
    vocab: int

    @property
    def params(self) -> float:
        """Encoder layer 12d^2, decoder layer 16d^2 (with cross-attention), embeddings, convs."""
        d = self.d
        return (12 * self.enc_layers + 16 * self.dec_layers) * d * d + self.vocab * d \
            + 3 * d * (80 + d) + 2 * 1500 * d


def arch_of(base: str) -> Arch:
    """The base's shapes, from its config when readable, else from the name."""
    try:
        from transformers import WhisperConfig

        c = WhisperConfig.from_pretrained(base)
        return Arch(c.d_model, c.encoder_layers, c.decoder_layers, c.vocab_size)
    except Exception:  # offline hub id: the known sizes
        name = Path(base).name.lower()
        for key in ("turbo", "large", "medium", "small", "base", "tiny"):
            if key in name:
                return Arch(*ARCHS[key])
        return Arch(*ARCHS["small"])


def lora_params(arch: Arch, cfg: WhisperFTConfig) -> float:
    """Trainable LoRA parameters: r x (in + out) per targeted projection."""
    names = {t.strip() for t in cfg.lora_targets.split(",") if t.strip()}
    d, r = arch.d, cfg.lora_r
    per = {"q_proj": 2 * d, "k_proj": 2 * d, "v_proj": 2 * d, "out_proj": 2 * d,
           "fc1": 5 * d, "fc2": 5 * d}
    enc = sum(per.get(n, 2 * d) for n in names) * r
    dec = enc + sum(per.get(n, 2 * d) for n in names & {"q_proj", "k_proj", "v_proj",
                                                         "out_proj"}) * r  # cross-attention
    return (0 if cfg.freeze_encoder else enc * arch.enc_layers) + dec * arch.dec_layers


def estimate_bytes(cfg: WhisperFTConfig, ckpt_encoder: int, ckpt_decoder: int,
                   optimizer_8bit: bool, arch: Arch | None = None,
                   label_tokens: int = LABEL_TOKENS) -> int:
    """Peak training memory on CUDA (half-precision compute), in bytes, for `ckpt_encoder`
    encoder and `ckpt_decoder` decoder layers under gradient checkpointing.

    Per token of a layer that is not checkpointed, the bytes autograd keeps (counted from what
    each op saves, calibrated on the H200 peaks in bench/results/whisper_ft.json): a full
    fine-tune keeps ~40 x d_model (fp32 residual stream, bf16 copies for the matmuls); LoRA over
    a bf16 base ~48 x d_model (each adapter's own bf16 copy of its input). A checkpointed
    layer keeps only its input; the one being recomputed is counted once. The 1500 encoder
    frames per 30 s window dominate."""
    a = arch or arch_of(cfg.base_model)
    d, B = a.d, cfg.batch_size
    lora = cfg.resolved_method() == "lora"
    p = a.params
    if lora:
        t = lora_params(a, cfg)
        states = 2 * p + t * (4 + 4 + (2 if optimizer_8bit else 8))
    else:
        t = p
        # fp32 weights and grads, Adam's state, bf16 copies of the weights under autocast
        states = p * (4 + 4 + (2 if optimizer_8bit else 8) + 2)
    names = {x.strip() for x in cfg.lora_targets.split(",") if x.strip()}
    dropout = lora and cfg.lora_dropout > 0
    # encoder layer, bytes per token per d_model
    enc = 40.0
    if lora:
        # measured on the H200 (bench/results/whisper_ft.json): ~47 with or without LoRA
        # dropout. Without it, autocast still gives every adapter its own bf16 copy of the
        # fp32 LayerNorm output it reads; with it, the dropped-out copies are those copies.
        enc = 48.0
    # cross-attention keeps k and v of the encoder output in every decoder layer; a full
    # fine-tune also keeps bf16 copies of its input for k_proj and v_proj
    cross = 4.0 + (4.0 if not lora else 0) + (3.0 * len(names & {"k_proj", "v_proj"})
                                              if dropout else 0)
    dec = 60.0
    frozen_enc = cfg.freeze_encoder
    tok_e, tok_d = B * FRAMES, B * label_tokens
    enc_layer = tok_e * d * enc
    enc_ckpt = tok_e * d * 2
    if frozen_enc:  # no gradient flows into the encoder: nothing of it is kept
        enc_acts = tok_e * d * 4
    else:
        ce = min(ckpt_encoder, a.enc_layers)
        enc_acts = (a.enc_layers - ce) * enc_layer + ce * enc_ckpt + (enc_layer if ce else 0)
        enc_acts += tok_e * d * 2 * 6  # the two convolutions before the first layer
    dec_layer = tok_e * d * cross + tok_d * d * dec
    cd = min(ckpt_decoder, a.dec_layers)
    dec_acts = (a.dec_layers - cd) * dec_layer + cd * tok_d * d * 2 + (dec_layer if cd else 0)
    logits = tok_d * a.vocab * (2 + 4 + 4)  # bf16 logits, fp32 log-softmax and its gradient
    return int(states + enc_acts + dec_acts + logits + 0.5 * GiB)


@dataclass
class MemoryPlan:
    """What the job runs with: the optimizer, how many encoder and decoder layers recompute
    their activations (gradient checkpointing), and the estimate behind the choice."""

    optimizer: str
    ckpt_encoder: int = 0
    ckpt_decoder: int = 0
    estimate: int = 0
    budget: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def checkpointing(self) -> bool:
        return bool(self.ckpt_encoder or self.ckpt_decoder)

    def describe(self, arch: Arch) -> str:
        if not self.checkpointing:
            return "gradient checkpointing off"
        return (f"gradient checkpointing on {self.ckpt_encoder}/{arch.enc_layers} encoder and "
                f"{self.ckpt_decoder}/{arch.dec_layers} decoder layers")


def _bnb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def plan_memory(cfg: WhisperFTConfig, device: str, budget: int | None,
                arch: Arch | None = None, label_tokens: int = LABEL_TOKENS) -> MemoryPlan:
    """The fastest settings whose estimate fits `budget` (default: the card's memory).

    Order of preference: torch's fused AdamW (one kernel for all parameters) over
    bitsandbytes' 8-bit AdamW, which synchronises the GPU after every parameter (bitsandbytes
    0.50), so it is taken only when the optimizer state would not fit otherwise; then as few
    checkpointed layers as fit (each one costs a recomputed forward), encoder layers first
    (the most memory per recomputed op). `label_tokens`: the longest transcript of the data in
    tokens (the job counts them; 128 when unknown)."""
    if device != "cuda":
        return MemoryPlan("adamw_torch", notes=["CPU: AdamW, no gradient checkpointing"])
    a = arch or arch_of(cfg.base_model)
    if budget is None:
        import torch

        budget = torch.cuda.get_device_properties(0).total_memory
    limit = MARGIN * budget
    bnb = _bnb_available()
    if cfg.optimizer == "adamw_8bit" and not bnb:
        raise ValueError("8-bit AdamW needs bitsandbytes (pip install bitsandbytes)")
    optims = {"adamw_torch": [False], "adamw_8bit": [True]}.get(
        cfg.optimizer, [False, True] if bnb else [False])
    n_enc = 0 if cfg.freeze_encoder else a.enc_layers
    if cfg.gradient_checkpointing == "off":
        layouts = [(0, 0)]
    elif cfg.gradient_checkpointing == "on":
        layouts = [(n_enc, a.dec_layers)]
    else:
        layouts = [(e, 0) for e in range(n_enc + 1)] + [(n_enc, k)
                                                        for k in range(1, a.dec_layers + 1)]
    best = None
    for eight in optims:
        for e, k in layouts:
            est = estimate_bytes(cfg, e, k, eight, a, label_tokens)
            if est <= limit:
                best = MemoryPlan("adamw_bnb_8bit" if eight else "adamw_torch_fused", e, k,
                                  est, budget)
                break
        if best:
            break
    if best is None:  # nothing fits: the smallest, so the caller can say by how much
        eight = optims[-1]
        e, k = layouts[-1]
        best = MemoryPlan("adamw_bnb_8bit" if eight else "adamw_torch_fused", e, k,
                          estimate_bytes(cfg, e, k, eight, a, label_tokens), budget)
    best.notes.append(f"memory plan: {best.describe(a)}, {best.optimizer}; estimate "
                      f"{best.estimate / GiB:.1f} of {budget / GiB:.1f} GiB")
    return best


def want_checkpointing(cfg: WhisperFTConfig, device: str, budget: int | None) -> bool:
    return plan_memory(cfg, device, budget).checkpointing


def longest_label(cfg: WhisperFTConfig, pieces: list[Piece]) -> int:
    """Tokens of the longest training transcript with its prompt (for the memory plan)."""
    try:
        tok = load_processor(cfg.base_model).tokenizer
    except ValueError:
        return LABEL_TOKENS
    n = max((len(tok(" " + p.text.strip(), add_special_tokens=False).input_ids)
             for p in pieces), default=0)
    return min(448, n + 5)  # <|startoftranscript|>, language, task, <|notimestamps|>, <|eot|>


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


def load_model(cfg: WhisperFTConfig, device: str, dtype: Any, plan: MemoryPlan) -> tuple[
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
    model, notes = prepare_for_training(model.to(device), cfg, plan)
    return model, processor, prefix, notes


def set_checkpointing(model: Any, encoder_layers: int, decoder_layers: int) -> None:
    """Gradient checkpointing on the first `encoder_layers` encoder and `decoder_layers`
    decoder layers only (the rest keep their activations: no recomputation there)."""
    m = base_of(model)
    if encoder_layers or decoder_layers:
        # non-reentrant: gradients reach LoRA weights even though the encoder's input (the
        # log-mel features) does not require grad
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.config.use_cache = False
    else:
        m.gradient_checkpointing_disable()
    for layers, n in ((m.model.encoder.layers, encoder_layers),
                      (m.model.decoder.layers, decoder_layers)):
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i < n


def set_lora_input_cast(model: Any, on: bool) -> None:
    """PEFT casts each adapter's input to the adapter's dtype (fp32) before the adapter. Under
    autocast the matmul casts anyway, so in training this is off: one op less per adapter and
    the adapters of one input share it instead of each keeping an fp32-then-bf16 copy. Decoding
    without autocast needs it on (bf16 input, fp32 adapter)."""
    for mod in model.modules():
        if hasattr(mod, "cast_input_dtype_enabled"):
            mod.cast_input_dtype_enabled = on


def prepare_for_training(model: Any, cfg: WhisperFTConfig, plan: MemoryPlan | bool) -> tuple[
        Any, list[str]]:
    """SpecAugment, gradient checkpointing (as `plan` says: the layers it names; True = every
    layer), a frozen encoder and LoRA, as `cfg` says (the GPU bench calls this on random
    weights of the real architectures)."""
    notes = []
    c = model.config
    if not isinstance(plan, MemoryPlan):
        plan = MemoryPlan("", c.encoder_layers if plan else 0, c.decoder_layers if plan else 0)
    c.apply_spec_augment = cfg.spec_augment
    if cfg.spec_augment:
        for k, v in SPEC_AUGMENT.items():
            setattr(c, k, v)
        notes.append("SpecAugment: time and frequency masks (p 0.05, width 10)")
    set_checkpointing(model, plan.ckpt_encoder, plan.ckpt_decoder)
    notes.append(plan.describe(Arch(c.d_model, c.encoder_layers, c.decoder_layers,
                                    c.vocab_size)))
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
        if next(model.parameters()).device.type == "cuda":
            set_lora_input_cast(model, False)
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
    """Pieces -> {input_features, labels}; audio is read and featurised when a batch first
    needs it, and the log-mel features (80 x 3000 float32, ~1 MB a piece) of the first
    `cache_pieces` pieces are kept, so later epochs skip the STFT (SpecAugment masks inside
    the model, so a cached piece still gets fresh masks every step)."""

    def __init__(self, pieces: list[Piece], folder: Path, processor: Any, prefix: list[int],
                 max_label: int, cache_pieces: int = 512):
        self.pieces, self.folder, self.processor = pieces, Path(folder), processor
        self.prefix, self.max_label = prefix, max_label
        self.cache_pieces = cache_pieces
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.pieces)

    def labels(self, text: str) -> list[int]:
        tok = self.processor.tokenizer
        ids = tok(" " + text.strip(), add_special_tokens=False).input_ids
        return self.prefix + ids[: self.max_label - len(self.prefix) - 2] + [tok.eos_token_id]

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.pieces[i]
        feats = self._cache.get(i)
        if feats is None:
            feats = features(self.processor, self.folder / p.audio)
            if len(self._cache) < self.cache_pieces:
                self._cache[i] = feats
        return {"input_features": feats, "labels": self.labels(p.text)}


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
    casts = [mod for mod in model.modules() if hasattr(mod, "cast_input_dtype_enabled")]
    was_cast = [mod.cast_input_dtype_enabled for mod in casts]
    set_lora_input_cast(model, True)  # no autocast here: bf16 inputs meet fp32 adapters
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
        for mod, on in zip(casts, was_cast, strict=True):
            mod.cast_input_dtype_enabled = on
    return out


def evaluate(model: Any, processor: Any, pieces: list[Piece], folder: Path,
             cfg: WhisperFTConfig) -> dict[str, Any]:
    hyps = transcribe_pieces(model, processor, pieces, folder, cfg)
    refs = [p.text for p in pieces]
    return {"wer": metrics.wer(refs, hyps), "hyps": hyps,
            "glossary": metrics.glossary_recall(cfg.glossary_terms(), refs, hyps)}


# ----- the job ---------------------------------------------------------------------------------
def optimizer_name(cfg: WhisperFTConfig, device: str, plan: MemoryPlan | None = None) -> str:
    """The plan's optimizer on CUDA (see `plan_memory`), AdamW on CPU."""
    if device != "cuda":
        return "adamw_torch"
    return (plan or plan_memory(cfg, device, None)).optimizer


def training_args(cfg: WhisperFTConfig, run_dir: Path, device: str, dtype: Any,
                  plan: MemoryPlan | None = None) -> Any:
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
        fp16=cuda and dtype == torch.float16, optim=optimizer_name(cfg, device, plan),
        # the NaN filter reads the loss on the host every step: a GPU sync per step
        logging_nan_inf_filter=False,
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, use_cpu=not cuda,
        remove_unused_columns=False, disable_tqdm=True, label_names=["labels"],
        dataloader_num_workers=2 if cuda else 0, dataloader_pin_memory=cuda,
        dataloader_persistent_workers=cuda)


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
    budget = int(cfg.memory_budget_gib * GiB) if cfg.memory_budget_gib else None
    plan = plan_memory(cfg, device, budget, label_tokens=longest_label(cfg, train))
    model, processor, prefix, notes = load_model(cfg, device, dtype, plan)
    report.log(f"base {cfg.base_model} ({cfg.resolved_method()}, {str(dtype).split('.')[-1]} "
               f"on {device}); language {cfg.language}, task {cfg.task}")
    for n in plan.notes + notes:
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

    args = training_args(cfg, run_dir, device, dtype, plan)
    optim = getattr(args.optim, "value", args.optim)
    report.log(f"optimizer {optim}, learning rate {args.learning_rate:g}, batch "
               f"{cfg.batch_size} x {cfg.grad_accumulation}, {cfg.max_steps} steps")

    def make_trainer() -> Any:
        return Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collate,
                       callbacks=[trainer_callback(report, cfg.eval_steps, eval_now)])

    trainer = make_trainer()
    last = report.last_checkpoint()
    if last:
        report.log(f"resumed from step {last[1]} ({last[0].name})")
    resume = str(last[0]) if last else None
    try:
        trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError:
        c = base_of(model).config
        everything = (plan.ckpt_encoder, plan.ckpt_decoder) == (c.encoder_layers,
                                                                c.decoder_layers)
        if (device != "cuda" or cfg.gradient_checkpointing != "auto" or everything
                or trainer.state.global_step > (last[1] if last else 0)):
            raise
        # the estimate was low for this card or data: the slowest plan that surely fits
        report.log("out of memory in the first step: gradient checkpointing on every layer, "
                   "starting again")
        del trainer
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        set_checkpointing(model, c.encoder_layers, c.decoder_layers)
        trainer = make_trainer()
        trainer.train(resume_from_checkpoint=resume)
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

