"""What each role can be: the profile's model plus a few curated alternatives per card.

Sizes here are hints shown until the hub's model info gives the exact bytes (they are what the
repositories held when this list was written); VRAM figures are estimates for the studio's way
of loading (4-bit NF4 for 7-8B models) until the model manager has measured the real load.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1000**3
MB = 1000**2
GiB = 1024**3

ROLES = ["chat", "embedder", "reranker", "whisper", "diarization", "sd", "sdxl", "yolo", "vlm",
         "qlora_base"]
ROLE_TITLES = {"chat": "Chat model", "embedder": "Embedder (RAG)", "reranker": "Reranker (RAG)",
               "whisper": "Whisper (speech to text)", "diarization": "Speaker diarization",
               "sd": "Stable Diffusion 1.5", "sdxl": "SDXL", "yolo": "YOLO detector",
               "vlm": "Image chat (VLM)", "qlora_base": "QLoRA base model"}
USED_BY = {"chat": ["Chat", "RAG answers", "Transcribe post-edit"], "embedder": ["RAG"],
           "reranker": ["RAG"], "whisper": ["Transcribe"], "diarization": ["Transcribe"],
           "sd": ["Stable Diffusion LoRA"], "sdxl": ["Stable Diffusion LoRA (generate)"],
           "yolo": ["YOLO"], "vlm": ["Image chat"], "qlora_base": ["QLoRA"]}

# Files diffusers reads for a pipeline loaded without a variant (no safety checker).
_SD_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*",
             "feature_extractor/*", "text_encoder/config.json", "text_encoder/model.safetensors",
             "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model.safetensors")
# Files faster-whisper's own download takes.
_CT2_FILES = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json",
              "vocabulary.*")


@dataclass(frozen=True)
class Option:
    """One model a role can use, and how the studio fetches it."""

    role: str
    source: str  # what the tab loads: hub id, size name, local path
    title: str
    quantization: str = "none"
    gguf_file: str | None = None
    download: str | None = None  # hub repo to fetch; None = not fetched from the hub
    cache: str = "hub"  # which studio cache it lands in (studio.hub.studio_cache_dirs)
    allow: tuple[str, ...] = ()  # file patterns; empty = the studio's generic pick
    size_hint: int = 0  # bytes
    vram: int = 0  # estimated bytes on the GPU once loaded
    note: str = ""


def _llm(role: str, repo: str, title: str, size: float, vram: float, quant: str = "nf4",
         note: str = "") -> Option:
    return Option(role, repo, title, quant, download=repo, size_hint=int(size * GB),
                  vram=int(vram * GiB), note=note)


def _llm_options(role: str) -> list[Option]:
    # chat decodes through the int4 route on CUDA ("auto"); a QLoRA base trains in NF4
    q = "auto" if role == "chat" else "nf4"
    return [
        _llm(role, "meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct", 16.07, 5.7, q,
             note="gated: accept Meta's licence on its page; quantized to 4-bit when loaded"),
        _llm(role, "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
             "Llama-3.1-8B-Instruct, pre-quantized 4-bit", 5.70, 5.7, q,
             note="the same model already in 4-bit: a third of the download; needs a CUDA GPU"),
        _llm(role, "Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct", 15.23, 5.5, q,
             note="not gated; strong at tools and code"),
        _llm(role, "Qwen/Qwen2.5-3B-Instruct", "Qwen2.5-3B-Instruct", 6.17, 2.5, q,
             note="for 6-8 GB cards"),
        _llm(role, "HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2-1.7B-Instruct", 3.42, 3.4,
             "bf16", note="small and quick; fine on a CPU too"),
    ]


# faster-whisper's size names -> its hub repos (as faster_whisper.utils._MODELS has them; copied
# so the page does not import faster-whisper and CTranslate2 just to show a size)
WHISPER_CT2 = {n: f"Systran/faster-whisper-{n}" for n in
               ("tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
                "large-v1", "large-v2", "large-v3")}
WHISPER_CT2.update({"large": "Systran/faster-whisper-large-v3",
                    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
                    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
                    "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo"})
CT2_FILES = _CT2_FILES


def whisper_repo(size_name: str) -> str | None:
    if size_name in WHISPER_CT2:
        return WHISPER_CT2[size_name]
    try:
        import faster_whisper.utils as fwu

        return fwu._MODELS.get(size_name)
    except ImportError:
        return None


def _whisper(size_name: str, title: str, size: float, vram: float, transformers: bool) -> Option:
    if transformers:
        return Option("whisper", size_name, title, "fp16", download=f"openai/whisper-{size_name}",
                      size_hint=int(size * GB), vram=int(vram * GiB),
                      note="transformers engine (this GPU cannot run CTranslate2)")
    return Option("whisper", size_name, title, "fp16", download=whisper_repo(size_name),
                  cache="whisper", allow=_CT2_FILES, size_hint=int(size * GB),
                  vram=int(vram * GiB), note="faster-whisper (CTranslate2)")


def _whisper_uses_transformers(device: str) -> bool:
    if device != "cuda":
        return False
    try:
        from tabs.whisper.engines import choose_engine

        return choose_engine("auto", device, "large-v3")[0] == "transformers"
    except Exception:  # faster-whisper missing or broken: the transformers path
        return True


def full_options(device: str = "cpu") -> dict[str, list[Option]]:
    """Curated choices for a 12 GB card (the first of each list is the profile's default)."""
    hf = _whisper_uses_transformers(device)
    return {
        "chat": _llm_options("chat"),
        "qlora_base": _llm_options("qlora_base")[:4],
        "embedder": [
            Option("embedder", "BAAI/bge-small-en-v1.5", "bge-small-en-v1.5",
                   download="BAAI/bge-small-en-v1.5", size_hint=134 * MB, vram=140 * MB),
            Option("embedder", "BAAI/bge-base-en-v1.5", "bge-base-en-v1.5",
                   download="BAAI/bge-base-en-v1.5", size_hint=438 * MB, vram=450 * MB,
                   note="better retrieval, 3x slower ingest"),
            Option("embedder", "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2",
                   download="sentence-transformers/all-MiniLM-L6-v2", size_hint=91 * MB,
                   vram=100 * MB, note="the smallest"),
        ],
        "reranker": [
            Option("reranker", "BAAI/bge-reranker-base", "bge-reranker-base",
                   download="BAAI/bge-reranker-base", size_hint=int(1.11 * GB), vram=600 * MB),
            Option("reranker", "cross-encoder/ms-marco-MiniLM-L6-v2", "ms-marco-MiniLM-L6-v2",
                   download="cross-encoder/ms-marco-MiniLM-L6-v2", size_hint=91 * MB,
                   vram=100 * MB, note="a tenth of the size, English only"),
            Option("reranker", "BAAI/bge-reranker-v2-m3", "bge-reranker-v2-m3",
                   download="BAAI/bge-reranker-v2-m3", size_hint=int(2.27 * GB),
                   vram=int(1.2 * GiB), note="multilingual"),
        ],
        "whisper": [
            _whisper("large-v3", "Whisper large-v3", 3.09, 3.5, hf),
            _whisper("large-v3-turbo", "Whisper large-v3-turbo", 1.62, 2.0, hf),
            _whisper("small", "Whisper small", 0.48, 1.0, hf),
            _whisper("base", "Whisper base", 0.15, 0.5, hf),
        ],
        "diarization": [
            Option("diarization", "pyannote/speaker-diarization-community-1",
                   "pyannote community-1", download="pyannote/speaker-diarization-community-1",
                   cache="pyannote", allow=("*",), vram=int(1.0 * GiB),
                   note="gated: accept the terms on its page"),
        ],
        "sd": [
            Option("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "SD 1.5", "fp16",
                   download="stable-diffusion-v1-5/stable-diffusion-v1-5", allow=_SD_FILES,
                   size_hint=int(4.27 * GB), vram=int(2.6 * GiB)),
        ],
        "sdxl": [
            Option("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "SDXL base", "fp16",
                   download="stabilityai/stable-diffusion-xl-base-1.0", allow=_SD_FILES,
                   size_hint=int(13.9 * GB), vram=int(7.5 * GiB),
                   note="the full-precision folders diffusers loads, cast to fp16"),
        ],
        "yolo": [
            Option("yolo", "yolov8n.pt", "YOLOv8n (COCO)", size_hint=int(6.2 * MB),
                   vram=100 * MB, note="fetched by ultralytics from GitHub on first use"),
            Option("yolo", "yolov8s.pt", "YOLOv8s (COCO)", size_hint=int(22.6 * MB),
                   vram=200 * MB, note="fetched by ultralytics from GitHub on first use"),
            Option("yolo", "yolo11n.pt", "YOLO11n (COCO)", size_hint=int(5.4 * MB),
                   vram=100 * MB, note="fetched by ultralytics from GitHub on first use"),
        ],
        "vlm": [
            Option("vlm", "llava-hf/llava-1.5-7b-hf", "LLaVA-1.5-7B", "nf4",
                   download="llava-hf/llava-1.5-7b-hf", size_hint=int(14.1 * GB),
                   vram=int(4.8 * GiB)),
            Option("vlm", "llava-hf/llava-interleave-qwen-0.5b-hf", "LLaVA-interleave 0.5B",
                   "fp16", download="llava-hf/llava-interleave-qwen-0.5b-hf",
                   size_hint=int(1.79 * GB), vram=int(1.2 * GiB), note="for small cards"),
        ],
    }


def options_for(role: str, device: str = "cpu") -> list[Option]:
    return full_options(device).get(role, [])
