"""Typed settings for SD LoRA training and generation, and the memory arithmetic behind them.

`SDTrainConfig` is what the UI fills in, the job reads, and the run folder keeps
(``config.json``). `estimate_training` answers "will it fit?" before a job starts, and picks
gradient checkpointing only when the card needs it (it costs about a third of a step's time).
`plan_generation` picks the SDXL memory settings (fp16-safe VAE, VAE slicing/tiling, model CPU
offload) from the budget, with the reasons shown to the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.jobconfig import JobConfig
from studio.jobconfig import setting as _f
from studio.safety import check_model_source
from tabs.sd.single_file import PICKLE_EXTS

GiB = 1024**3

# Parameter counts of the real architectures (diffusers configs of SD 1.5 and SDXL base).
PARAMS = {
    "sd15": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840, "vae": 83_653_863},
}
# Activation (+ LoRA optimizer) memory of one 512x512 training sample in fp16, from the peaks
# bench/sd.py measured on the GPU machine (2.37 GiB with checkpointing, 3.20 GiB without, over
# 1.99 GiB of weights), rounded up; it scales with the latent area.
ACT_PER_SAMPLE = {"checkpointing": int(0.45 * GiB), "plain": int(1.35 * GiB)}
# LoRA parameters of SD 1.5 attention (to_q/k/v/out) per unit of rank.
LORA_PARAMS_PER_RANK = {"unet": 199_296, "text_encoder": 49_152}
OVERHEAD = int(0.4 * GiB)  # CUDA context, allocator fragmentation, cuDNN workspaces

LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear", "polynomial")
PRECISIONS = ("fp16", "bf16", "no")




@dataclass
class SDTrainConfig(JobConfig):
    """One SD 1.5 LoRA training run. Defaults are a good first try on a 12 GB card."""

    NAME = "SD training"

    base_model: str = _f("stable-diffusion-v1-5/stable-diffusion-v1-5", "Base model",
                         "hub id, local diffusers folder, or a single .safetensors checkpoint",
                         max_chars=1024)
    dataset_dir: str = _f("", "Prepared dataset folder", max_chars=1024)
    output_name: str = _f("my_lora", "LoRA name", "letters, digits, '.', '_' or '-'",
                          max_chars=100)
    lora_library: str = _f("", "Folder the Generate tab lists LoRAs from")
    class_cache: str = _f("", "Folder where generated class images are cached")
    resolution: int = _f(512, "Resolution", "images are resized and cropped to this square",
                         minimum=32, maximum=2048)
    rank: int = _f(8, "LoRA rank", "4-16; higher learns more detail and overfits sooner",
                   minimum=1, maximum=128)
    alpha: float = _f(8.0, "LoRA alpha", "scale = alpha / rank", minimum=0.01, maximum=1024)
    train_text_encoder: bool = _f(False, "Train the text encoder too")
    learning_rate: float = _f(1e-4, "Learning rate (UNet)", minimum=1e-9, maximum=1.0)
    text_encoder_lr: float = _f(5e-5, "Learning rate (text encoder)", minimum=1e-9, maximum=1.0)
    lr_scheduler: str = _f("constant", "LR schedule", ", ".join(LR_SCHEDULES))
    lr_warmup_steps: int = _f(0, "Warmup steps", minimum=0, maximum=100_000)
    max_steps: int = _f(500, "Steps", "optimizer steps (each sees batch x accumulation images)",
                        minimum=1, maximum=100_000)
    epochs: int = _f(0, "Epochs", "0 = train for Steps; otherwise passes over the dataset, "
                     "turned into steps when the job is queued", minimum=0, maximum=10_000)
    batch_size: int = _f(1, "Batch size", minimum=1, maximum=64)
    grad_accumulation: int = _f(1, "Gradient accumulation", minimum=1, maximum=1024)
    gradient_checkpointing: str = _f("auto", "Gradient checkpointing",
                                     "auto: only when the estimate says the card needs it")
    mixed_precision: str = _f("fp16", "Mixed precision", "fp16, bf16 or no (CUDA only)")
    use_8bit_adam: bool = _f(True, "8-bit Adam", "bitsandbytes AdamW8bit on CUDA")
    attention: str = _f("sdpa", "Attention", "sdpa (PyTorch) or xformers when installed")
    seed: int = _f(42, "Seed", minimum=0, maximum=2**32 - 1)
    noise_offset: float = _f(0.0, "Noise offset", "0.05-0.1 helps very dark or bright images",
                             minimum=0, maximum=1)
    cache_latents: bool = _f(True, "Cache VAE latents and text embeddings",
                             "encode the dataset once instead of every step")
    channels_last: bool = _f(True, "Channels-last UNet (CUDA)")
    prior_preservation: bool = _f(False, "Prior preservation")
    class_prompt: str = _f("", "Class prompt", "e.g. 'a photo of a backpack'", max_chars=1000)
    class_images_dir: str = _f("", "Your own class images (optional)", max_chars=1024)
    num_class_images: int = _f(100, "Class images", minimum=0, maximum=5000)
    prior_loss_weight: float = _f(1.0, "Prior loss weight", minimum=0, maximum=100)
    sample_prompts: list = _f([], "Sample prompts", "one per line; drawn every N steps",
                              max_items=20)
    sample_every: int = _f(100, "Sample every N steps", "0 = only at the end", minimum=0,
                           maximum=100_000)
    sample_steps: int = _f(20, "Sampling steps", minimum=1, maximum=200)
    sample_seed: int = _f(1234, "Sample seed", minimum=0, maximum=2**32 - 1)
    checkpoint_every: int = _f(100, "Checkpoint every N steps", "0 = only at the end",
                               minimum=0, maximum=100_000)
    trigger_words: list = _f([], "Trigger words", "saved in the LoRA's metadata", max_items=50)
    dataset_hash: str = _f("", "Dataset hash")
    single_file_config: str = _f("", "Config for single files",
                                 "hub id or local diffusers folder giving a .safetensors base "
                                 "its configs; empty = the SD 1.5 or SDXL repo, detected "
                                 "from the file")
    base_model_path: str = _f("", "Base model on disk",
                              "filled when the job is queued: the hub id's folder in the "
                              "cache, so the job never goes to the network", max_chars=4096)



    def validate(self) -> None:
        """Raise ValueError with a message a user can act on."""
        from studio.safety import safe_name

        safe_name(self.output_name, label="LoRA name")
        if self.resolution % 8:
            raise ValueError("resolution must be a multiple of 8, at least 32")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accumulation < 1:
            raise ValueError("steps, batch size and accumulation must be at least 1")
        if self.epochs < 0:
            raise ValueError("epochs cannot be negative (0 = train for Steps)")
        if self.lr_scheduler not in LR_SCHEDULES:
            raise ValueError(f"LR schedule must be one of {LR_SCHEDULES}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed precision must be one of {PRECISIONS}")
        if self.attention not in ("sdpa", "xformers"):
            raise ValueError("attention must be sdpa or xformers")
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            raise ValueError("gradient checkpointing must be auto, on or off")
        if self.prior_preservation and not self.class_prompt.strip():
            raise ValueError("prior preservation needs a class prompt, e.g. 'a photo of a dog'")
        if not self.base_model.strip():
            raise ValueError("choose a base model (hub id, folder or .safetensors file)")
        if self.base_model.strip().lower().endswith(PICKLE_EXTS):
            raise ValueError("pickle checkpoints (.ckpt/.pt/.bin) can run code when loaded; "
                             "use the .safetensors version of the base model")
        if self.single_file_config.strip():
            check_model_source(self.single_file_config, label="Config for single files")


@dataclass
class TrainEstimate:
    """The "will it fit?" answer: total bytes, what they are, and the checkpointing choice."""

    total: int
    parts: dict[str, int]
    gradient_checkpointing: bool
    budget: int

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def describe(self) -> str:
        from studio.config import format_bytes

        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.parts.items())
        verdict = "fits" if self.fits else "does NOT fit"
        gc = "on" if self.gradient_checkpointing else "off (not needed)"
        return (f"Estimated peak {format_bytes(self.total)}: {verdict} in the "
                f"{format_bytes(self.budget)} budget. Gradient checkpointing {gc}. ({parts})")


def estimate_training(cfg: SDTrainConfig, budget: int) -> TrainEstimate:
    """Peak GPU bytes of a training run, and whether gradient checkpointing is needed."""
    p = PARAMS["sd15"]
    wbytes = 4 if cfg.mixed_precision == "no" else 2
    lora = cfg.rank * (LORA_PARAMS_PER_RANK["unet"] +
                       (LORA_PARAMS_PER_RANK["text_encoder"] if cfg.train_text_encoder else 0))
    samples = cfg.batch_size * (2 if cfg.prior_preservation else 1)
    area = (cfg.resolution / 512) ** 2
    te_act = int(0.05 * GiB) * samples if cfg.train_text_encoder else 0

    def total(gc: bool) -> tuple[int, dict[str, int]]:
        act = ACT_PER_SAMPLE["checkpointing" if gc else "plain"] * samples * area
        parts = {
            "weights": (p["unet"] + p["text_encoder"] + p["vae"]) * wbytes,
            "LoRA + optimizer": lora * (4 + 4 + (2 if cfg.use_8bit_adam else 8)),
            "activations": int(act * (1 if wbytes == 2 else 2)) + te_act,
            "overhead": OVERHEAD,
        }
        return sum(parts.values()), parts

    if cfg.gradient_checkpointing == "auto":
        t, parts = total(False)
        gc = t > budget
        if gc:
            t, parts = total(True)
    else:
        gc = cfg.gradient_checkpointing == "on"
        t, parts = total(gc)
    return TrainEstimate(total=t, parts=parts, gradient_checkpointing=gc, budget=budget)


@dataclass
class MemoryPlan:
    """How a pipeline is loaded and run on this budget, with the reasons shown to the user."""

    arch: str
    dtype: str  # "fp16" | "fp32"
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    fp16_vae: str | None = None  # hub id/folder of an fp16-safe SDXL VAE
    compile_unet: bool = False
    channels_last: bool = False
    fuse_qkv: bool = False
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        on = [name for name, flag in (
            ("model CPU offload", self.cpu_offload), ("VAE slicing", self.vae_slicing),
            ("VAE tiling", self.vae_tiling), ("compiled UNet", self.compile_unet),
            ("channels-last", self.channels_last), ("fused QKV", self.fuse_qkv)) if flag]
        if self.fp16_vae:
            on.append(f"fp16-safe VAE ({self.fp16_vae})")
        head = f"{self.arch.upper()} in {self.dtype}" + (f": {', '.join(on)}" if on else "")
        return head + ("" if not self.reasons else " — " + "; ".join(self.reasons))


SDXL_FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"


def weight_bytes(arch: str, dtype: str) -> int:
    return sum(PARAMS[arch].values()) * (2 if dtype == "fp16" else 4)


def vae_decode_bytes(width: int, height: int, batch: int, dtype: str) -> int:
    """Peak of one un-tiled VAE decode: ~2.6 GiB per 1024x1024 fp16 image (grows with area)."""
    per = 2.6 * GiB * (width * height) / (1024 * 1024) * (1 if dtype == "fp16" else 2)
    return int(per * batch)


def unet_act_bytes(arch: str, width: int, height: int, batch: int, dtype: str) -> int:
    """Inference activations of the UNet with classifier-free guidance (two samples)."""
    base = {"sd15": 0.35, "sdxl": 1.2}[arch] * GiB  # at the arch's native size, batch 1
    native = 512 if arch == "sd15" else 1024
    return int(base * batch * (width * height) / native**2 * (1 if dtype == "fp16" else 2))


def plan_generation(arch: str, budget: int, device: str, width: int | None = None,
                    height: int | None = None, batch: int = 1,
                    fp16_vae: str | None = SDXL_FP16_VAE) -> MemoryPlan:
    """Pick dtype, offload, VAE slicing/tiling and speed-ups that fit `budget` on `device`."""
    from studio.config import format_bytes

    native = 512 if arch == "sd15" else 1024
    width, height = width or native, height or native
    cuda = device == "cuda"
    dtype = "fp16" if cuda else "fp32"
    plan = MemoryPlan(arch=arch, dtype=dtype)
    if not cuda:
        plan.reasons.append("CPU: fp32, no compile")
        return plan
    weights = weight_bytes(arch, dtype)
    act = unet_act_bytes(arch, width, height, batch, dtype)
    decode = vae_decode_bytes(width, height, batch, dtype)
    if arch == "sdxl" and fp16_vae:
        plan.fp16_vae = fp16_vae
        plan.reasons.append("SDXL's own VAE overflows in fp16; using the fp16-fix VAE")
    if batch > 1:
        plan.vae_slicing = True
        plan.reasons.append(f"batch of {batch}: decoding one image at a time")
    if weights + act + decode / (batch if plan.vae_slicing else 1) + OVERHEAD > budget:
        plan.vae_tiling = True
        plan.reasons.append("full-size VAE decode would not fit: decoding in tiles")
    if weights + act + OVERHEAD > budget:
        plan.cpu_offload = True
        plan.reasons.append(f"weights {format_bytes(weights)} + activations do not fit "
                            f"{format_bytes(budget)}: model CPU offload (slower)")
    if arch == "sd15" and not plan.cpu_offload:
        # The UNet step is bound by kernel launches at this size: CUDA graphs pay off.
        plan.compile_unet = plan.channels_last = plan.fuse_qkv = True
    # SDXL in eager mode: channels-last measured 27% slower at 1024 (bench/results/sd.json).
    return plan


def steps_for_epochs(epochs: int, n_images: int, batch_size: int, grad_accumulation: int) -> int:
    """Optimizer steps that show every image `epochs` times (the last step may be partial)."""
    per_step = batch_size * grad_accumulation
    return max(1, -(-epochs * n_images // per_step))
