"""ASR benchmark on pyannote.audio's 30 s two-speaker sample clip, ours against the plain
transformers ``pipeline("automatic-speech-recognition")`` baseline, in one run.

    python bench/asr.py                      # CPU part; writes bench/results/asr.json
    python bench/asr.py --diarization DIR    # also DER, with a local pyannote pipeline folder
    python bench/asr.py --hf-model DIR       # baseline with real transformers Whisper weights

Measured:
- WER of our transcript (`WhisperService.transcribe`, faster-whisper int8 on CPU, Silero VAD,
  word timestamps) against ``sample.stm`` (jiwer, lower-cased, punctuation removed).
- DER against ``sample.rttm`` (pyannote.metrics) when a diarization pipeline is given; otherwise
  "skipped: no diarization weights" (none exist offline).
- Real-time factor = audio seconds / wall seconds, model already loaded, best of ``--repeats``.
- Baseline speed: transformers' ASR pipeline, fp32 on CPU (fp16 + SDPA on CUDA), 30 s chunks.
  No transformers Whisper weights exist offline: by default it is a *random-weight* model of
  tiny.en's exact architecture (built from a config) with tiny.en's real tokenizer, so its
  time is the architecture's cost for a fixed number of decoded tokens (``--baseline-tokens``),
  not a quality figure. Its WER is not reported.
- On CUDA (the GPU machine): peak VRAM while large-v3 and pyannote are loaded together, when
  their weights are given (``--gpu-model``, ``--diarization``); recorded as not run otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SR = 16_000


def sample_files() -> tuple[Path, Path, Path]:
    import pyannote.audio

    d = Path(pyannote.audio.__file__).parent / "sample"
    return d / "sample.wav", d / "sample.stm", d / "sample.rttm"


def reference_text(stm: Path) -> str:
    return " ".join(line.split(" ", 5)[5] for line in stm.read_text().splitlines()
                    if line.strip())


def wer(ref: str, hyp: str) -> float:
    import jiwer

    clean = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                           jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                           jiwer.ReduceToListOfListOfWords()])
    return round(jiwer.wer(ref, hyp, reference_transform=clean, hypothesis_transform=clean), 4)


def der(rttm: Path, turns: list) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref = next(iter(load_rttm(str(rttm)).values()))
    hyp = Annotation()
    for t in turns:
        hyp[Segment(t.start, t.end)] = t.speaker
    return round(float(DiarizationErrorRate()(ref, hyp)), 4)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def timed(fn, repeats: int) -> tuple[object, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def tiny_en_random_folder(tok_dir: Path, out: Path) -> Path:
    """tiny.en's architecture with random weights + its real tokenizer, as a local folder."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    cfg = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4,
                        decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
                        encoder_ffn_dim=1536, decoder_ffn_dim=1536, max_source_positions=1500,
                        max_target_positions=448, decoder_start_token_id=50257,
                        eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    g = model.generation_config
    g.decoder_start_token_id, g.eos_token_id, g.pad_token_id = 50257, 50256, 50256
    g.no_timestamps_token_id, g.is_multilingual = 50362, False
    g.suppress_tokens, g.begin_suppress_tokens = [], [220, 50256]
    g.alignment_heads = [[2, 0], [3, 1]]  # for word timestamps (cross-attention DTW)
    g._from_model_config = False  # else loading rebuilds it from the model config
    model.save_pretrained(out)
    tok = WhisperTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"),
                               bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out


def baseline(model_dir: Path, audio, tokens: int, repeats: int) -> dict:
    import torch
    from transformers import pipeline

    cuda = torch.cuda.is_available()
    pipe = pipeline("automatic-speech-recognition", model=str(model_dir),
                    device=0 if cuda else -1, dtype=torch.float16 if cuda else torch.float32)
    kw = {"min_new_tokens": tokens, "max_new_tokens": tokens} if tokens else {}

    def run():
        return pipe({"raw": audio, "sampling_rate": SR}, chunk_length_s=30, batch_size=1,
                    generate_kwargs=kw)

    run()  # warm-up
    out, secs = timed(run, repeats)
    return {"seconds": round(secs, 3), "rtf": round(len(audio) / SR / secs, 2),
            "text_chars": len(out["text"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--diarization", default="", help="local pyannote pipeline folder")
    ap.add_argument("--hf-model", default="", help="local transformers Whisper folder")
    ap.add_argument("--baseline-tokens", type=int, default=80,
                    help="fixed decoded tokens per 30 s chunk for the random baseline")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "asr.json"))
    a = ap.parse_args()

    from studio.config import Settings
    from studio.context import build_studio
    from tabs.whisper.audio import load_audio
    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.diarization import PyannoteDiarizer
    from tabs.whisper.service import get_service

    wav, stm, rttm = sample_files()
    audio = load_audio(wav)
    home = Path(tempfile.mkdtemp(prefix="asr-bench-"))
    studio = build_studio(Settings(home=home, profile="small"), start_jobs=False)
    svc = get_service(studio)
    model = studio.choices["whisper"].source
    result: dict = {"device": device_name(), "clip": "pyannote.audio sample.wav",
                    "audio_seconds": round(len(audio) / SR, 2), "torch_threads": None}
    import torch

    result["torch_threads"] = torch.get_num_threads()
    cfg = TranscribeConfig(model=model, beam_size=a.beam_size, diarize=False)
    svc.transcribe(wav, cfg)  # load + warm-up
    t, secs = timed(lambda: svc.transcribe(wav, cfg), a.repeats)
    result["ours"] = {"engine": t.engine, "model": "tiny.en (CTranslate2)",
                      "compute_type": "int8", "beam_size": a.beam_size, "vad": True,
                      "word_timestamps": True, "wer": wer(reference_text(stm), t.text),
                      "seconds": round(secs, 3), "rtf": round(t.duration / secs, 2),
                      "text": t.text}
    if a.diarization:
        d = PyannoteDiarizer(studio, a.diarization)
        (turns, dsecs) = timed(lambda: d.diarize(audio), 1)
        result["diarization"] = {"der": der(rttm, turns), "seconds": round(dsecs, 3)}
    else:
        result["diarization"] = "skipped: no diarization weights"
    print("ours:", json.dumps(result["ours"]), "\ndiarization:", result["diarization"])

    if a.hf_model:
        folder, note = Path(a.hf_model), "real transformers Whisper weights"
        tokens = 0
    else:
        folder = tiny_en_random_folder(Path(model), home / "tiny-en-random")
        note = ("random weights of tiny.en's architecture with its real tokenizer (no "
                "transformers Whisper weights offline): speed only, at a fixed "
                f"{a.baseline_tokens} decoded tokens per 30 s chunk; ours decoded "
                "the real transcript")
        tokens = a.baseline_tokens
    result["baseline"] = {"what": 'transformers pipeline("automatic-speech-recognition")',
                          "note": note, **baseline(folder, audio, tokens, a.repeats)}
    print("baseline:", json.dumps(result["baseline"]))
    result["speedup_rtf"] = round(result["ours"]["rtf"] / result["baseline"]["rtf"], 2)
    result["gpu"] = ("not run: this file is the CPU part; the GPU part (transformers engine "
                     "fp16 + SDPA, large-v3 + pyannote peak VRAM) needs the GPU machine and "
                     "real weights")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)
    studio.close()


if __name__ == "__main__":
    main()
