"""Generation with SD 1.5 / SDXL through the model manager, with LoRAs and a working Stop.

The pipeline is a managed model (``sd:<arch>:<base>``): loaded once, pinned while a request
draws, evicted when another tab needs the memory. How it is loaded (dtype, fp16-safe VAE, CPU
offload, compiled channels-last UNet with fused QKV) comes from `plan_generation` and the budget.
Each request sets its LoRAs and strengths, reports every denoising step, and stops between steps
when asked (diffusers' ``callback_on_step_end`` + ``pipe._interrupt``). Images are saved as PNGs
whose text chunks carry prompt, seed and LoRAs in A1111's ``parameters`` format, which other
tools read.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.sessions import exclusive
from tabs.sd import lora_io, single_file
from tabs.sd.config import SDXL_FP16_VAE, MemoryPlan, plan_generation

ARCHS = ("sd15", "sdxl")
SCHEDULERS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "Default": None,
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
}


@dataclass
class LoraChoice:
    path: str
    strength: float = 1.0


@dataclass
class GenerateRequest:
    """One click of Generate."""

    base: str
    prompt: str
    arch: str = "sd15"
    negative_prompt: str = ""
    steps: int = 25
    guidance: float = 7.0
    seed: int = -1  # -1 = random
    width: int = 0  # 0 = the architecture's native size
    height: int = 0
    batch: int = 1
    scheduler: str = "DPM++ 2M"
    loras: list[LoraChoice] = field(default_factory=list)
    single_file_config: str = ""  # configs for a .safetensors base; "" = detected from the file

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"architecture must be one of {ARCHS}")
        single_file.check_base(self.base)
        if single_file.is_single_file(self.base):
            arch = single_file.detect_arch(self.base)
            if arch != self.arch:
                raise ValueError(f"{Path(self.base).name} is an {single_file.ARCH_NAMES[arch]} "
                                 f"checkpoint: choose {single_file.ARCH_NAMES[arch]} as the "
                                 "architecture")
        if not self.prompt.strip():
            raise ValueError("write a prompt first")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}")
        if not 1 <= self.steps <= 150:
            raise ValueError("steps must be between 1 and 150")
        if not 1 <= self.batch <= 8:
            raise ValueError("batch must be between 1 and 8")
        for v in (self.width, self.height):
            if v and (v % 8 or v < 32):
                raise ValueError("width and height must be multiples of 8 (at least 32)")
        for lc in self.loras:
            if not Path(lc.path).is_file():
                raise ValueError(f"LoRA file not found: {lc.path}")
            info = lora_io.read_info(Path(lc.path))
            if info is not None and info.arch != self.arch:
                raise ValueError(f"LoRA {Path(lc.path).stem} was trained for "
                                 f"{single_file.ARCH_NAMES.get(info.arch, info.arch)}; it "
                                 f"cannot be used with {single_file.ARCH_NAMES[self.arch]}")


@dataclass
class GeneratedImage:
    path: Path
    seed: int


@dataclass
class GenerateResult:
    images: list[GeneratedImage]
    plan: str
    stopped_at: int | None = None  # step the Stop took effect, None if it ran to the end
    seconds: float = 0.0


def model_key(base: str, arch: str, single_file_config: str = "") -> str:
    extra = f"|{single_file_config}" if single_file_config and single_file.is_single_file(base) \
        else ""
    return f"sd:{arch}:{base}{extra}"


def load_pipeline(base: str, arch: str, device: str, plan: MemoryPlan,
                  single_file_config: str = "") -> Any:
    """Load a pipeline as `plan` says. Hub id, diffusers folder, or single-file checkpoint."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    dtype = torch.float16 if plan.dtype == "fp16" else torch.float32
    kw: dict[str, Any] = {"torch_dtype": dtype}
    if arch == "sd15":
        kw.update(safety_checker=None, requires_safety_checker=False)
    if plan.fp16_vae:
        try:
            kw["vae"] = AutoencoderKL.from_pretrained(plan.fp16_vae, torch_dtype=dtype)
        except Exception as e:  # offline or missing: the pipeline upcasts its VAE instead
            plan.reasons.append(f"fp16-fix VAE unavailable ({type(e).__name__}); the VAE "
                                "decodes in fp32 (more memory)")
            plan.fp16_vae = None
    if single_file.is_single_file(base):
        pipe = single_file.load_pipeline(cls, base, single_file_config, **kw)
    else:
        pipe = cls.from_pretrained(base, **kw)
    return apply_plan(pipe, plan, device)


def apply_plan(pipe: Any, plan: MemoryPlan, device: str) -> Any:
    """Placement and speed-ups of a loaded pipeline (also used by bench/sd.py)."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    if plan.cpu_offload and device == "cuda":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if plan.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if plan.fuse_qkv:
        pipe.fuse_qkv_projections()
        pipe._studio_fused = True
    if plan.compile_unet:
        # In place, so LoRA loading still finds the UNet's modules; CUDA graphs remove the
        # kernel-launch overhead that bounds a 512 px step.
        pipe.unet.compile(mode="reduce-overhead", fullgraph=False)
    pipe._studio_plan = plan
    pipe._studio_loras = {}
    return pipe


def local_fp16_vae(studio: Any) -> str | None:
    """The fp16-fix SDXL VAE's folder if it is on disk; it is never fetched inside a request."""
    from studio.hub import hf_cache_dir, local_path

    found = local_path(studio.settings.home, SDXL_FP16_VAE, hf_cache_dir())
    return str(found) if found is not None else None


def ensure_registered(studio: Any, base: str, arch: str, single_file_config: str = "",
                      source: str | None = None) -> tuple[str, MemoryPlan]:
    """Register the pipeline with the model manager once; returns its key and memory plan.
    `source` is where `base` lies on disk (a hub id's cache folder), `base` itself if None."""
    from studio.models import ModelSpec
    from tabs.sd.config import weight_bytes

    key = model_key(base, arch, single_file_config)
    plans = studio.extras.setdefault("sd_plans", {})
    load_from = source or base

    def make_spec() -> ModelSpec:  # runs under the manager's lock, once per key
        fp16_vae = local_fp16_vae(studio) if arch == "sdxl" else None
        plan = plan_generation(arch, studio.models.budget, studio.probe.device,
                               fp16_vae=fp16_vae)
        if arch == "sdxl" and fp16_vae is None and studio.probe.device == "cuda":
            plan.reasons.append(f"the fp16-fix VAE ({SDXL_FP16_VAE}) is not on disk, so the "
                                "VAE decodes in fp32 (more memory); download it on the Models "
                                "tab")
        plans[key] = plan
        estimate = 0 if plan.cpu_offload else weight_bytes(arch, plan.dtype)
        return ModelSpec(
            key=key, title=f"{arch.upper()} {Path(base).name or base}",
            load=lambda device: load_pipeline(load_from, arch, device, plan, single_file_config),
            estimate=estimate if studio.probe.device == "cuda" else 0,
            reserve=int(1.5 * 1024**3) if studio.probe.device == "cuda" else 0)

    studio.models.ensure(key, make_spec)
    return key, plans[key]


def set_loras(pipe: Any, loras: list[LoraChoice]) -> list[str]:
    """Load any new LoRA files as adapters and set each one's strength."""
    loaded: dict[str, str] = pipe._studio_loras
    names = []
    for lc in loras:
        p = Path(lc.path)
        tag = f"{p.stem}_{int(p.stat().st_mtime)}".replace(".", "_")
        if loaded.get(tag) != str(p):
            if getattr(pipe, "_studio_fused", False):
                pipe.unfuse_qkv_projections()  # LoRA targets to_q/k/v, not the fused to_qkv
                pipe._studio_fused = False
            pipe.load_lora_weights(str(p), adapter_name=tag)
            loaded[tag] = str(p)
        names.append(tag)
    if names:
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=[float(lc.strength) for lc in loras])
    elif loaded:
        pipe.disable_lora()
    return names


def set_scheduler(pipe: Any, name: str) -> None:
    import diffusers

    if not hasattr(pipe, "_studio_default_scheduler"):
        pipe._studio_default_scheduler = pipe.scheduler
    spec = SCHEDULERS[name]
    if spec is None:
        pipe.scheduler = pipe._studio_default_scheduler
        return
    cls_name, extra = spec
    cls = getattr(diffusers, cls_name)
    pipe.scheduler = cls.from_config(pipe._studio_default_scheduler.config, **extra)


def a1111_parameters(req: GenerateRequest, seed: int, width: int, height: int) -> str:
    """The ``parameters`` text A1111, Forge, ComfyUI and image viewers read back."""
    lora_tags = " ".join(f"<lora:{Path(lc.path).stem}:{lc.strength:g}>" for lc in req.loras)
    prompt = f"{req.prompt} {lora_tags}".strip()
    text = prompt + "\n"
    if req.negative_prompt:
        text += f"Negative prompt: {req.negative_prompt}\n"
    text += (f"Steps: {req.steps}, Sampler: {req.scheduler}, CFG scale: {req.guidance:g}, "
             f"Seed: {seed}, Size: {width}x{height}, Model: {Path(req.base).name or req.base}")
    return text


def png_info(req: GenerateRequest, seed: int, width: int, height: int) -> Any:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(req, seed, width, height))
    info.add_text("prompt", req.prompt)
    info.add_text("negative_prompt", req.negative_prompt)
    info.add_text("seed", str(seed))
    info.add_text("loras", json.dumps([asdict(lc) for lc in req.loras]))
    info.add_text("studio", json.dumps(asdict(req) | {"seed": seed}))
    return info


def draw(pipe: Any, req: GenerateRequest, seed: int,
         on_step: Callable[[int, int], None] | None = None,
         should_stop: Callable[[], bool] | None = None) -> tuple[list[Any], int | None]:
    """Run the pipeline once for the batch (seed, seed+1, ...). Returns images, stop step."""
    import torch

    stopped: list[int] = []

    def callback(p: Any, i: int, t: Any, kwargs: dict) -> dict:
        if on_step is not None:
            on_step(i + 1, req.steps)
        if should_stop is not None and should_stop():
            p._interrupt = True
            stopped.append(i + 1)
        return kwargs

    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(req.batch)]
    native = 1024 if req.arch == "sdxl" else 512
    with torch.inference_mode():
        out = pipe(prompt=req.prompt, negative_prompt=req.negative_prompt or None,
                   num_inference_steps=req.steps, guidance_scale=req.guidance,
                   width=req.width or native, height=req.height or native,
                   num_images_per_prompt=req.batch, generator=gens,
                   callback_on_step_end=callback)
    return out.images, (stopped[0] if stopped else None)


def generate(studio: Any, req: GenerateRequest, out_dir: Path,
             on_step: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> GenerateResult:
    """Draw `req.batch` images with the managed pipeline and save them as PNGs."""
    from tabs.sd.service import resolve_base

    req.validate()
    # a hub id not on disk fails here, in words, instead of downloading inside the request
    source = resolve_base(studio, req.base, req.arch)
    key, plan = ensure_registered(studio, req.base, req.arch, req.single_file_config, source)
    seed = req.seed if req.seed >= 0 else random.randrange(2**31)
    native = 1024 if req.arch == "sdxl" else 512
    width, height = req.width or native, req.height or native
    t0 = time.perf_counter()

    size_plan = plan_generation(req.arch, studio.models.budget, studio.probe.device,
                                width, height, req.batch)
    used_plan: list[MemoryPlan] = []

    def work(pipe: Any) -> tuple[list[Any], int | None]:
        # this request's plan: the shared one (how the pipeline was loaded) is never changed
        mine = replace(plan, reasons=list(plan.reasons), vae_slicing=size_plan.vae_slicing,
                       vae_tiling=size_plan.vae_tiling)
        used_plan[:] = [mine]
        # LoRAs, scheduler and VAE plan live on the shared pipeline: the request holds it
        # alone while it sets them and draws (studio/sessions.py)
        with exclusive(pipe):
            _toggle(pipe.vae.enable_slicing, pipe.vae.disable_slicing, mine.vae_slicing)
            _toggle(pipe.vae.enable_tiling, pipe.vae.disable_tiling, mine.vae_tiling)
            set_loras(pipe, req.loras)
            set_scheduler(pipe, req.scheduler)
            return draw(pipe, req, seed, on_step, should_stop)

    images, stopped = studio.models.call_with_oom_retry(key, work)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    saved = []
    for i, im in enumerate(images):
        path = out_dir / f"{stamp}-{seed + i}-{uuid.uuid4().hex[:4]}.png"
        im.save(path, pnginfo=png_info(req, seed + i, width, height))
        saved.append(GeneratedImage(path, seed + i))
    return GenerateResult(saved, used_plan[0].describe(), stopped, time.perf_counter() - t0)


def _toggle(on: Callable[[], None], off: Callable[[], None], flag: bool) -> None:
    (on if flag else off)()


def read_png_parameters(path: Path) -> dict[str, str]:
    """The text chunks of a saved image (what other tools see)."""
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.text)
