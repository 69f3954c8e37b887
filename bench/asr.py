"""ASR benchmark on pyannote.audio's 30 s two-speaker sample clip, ours against the plain
transformers ``pipeline("automatic-speech-recognition")`` baseline, in one run.

    python bench/asr.py                      # CPU part; writes bench/results/asr.json
    python bench/asr.py --diarization DIR    # also DER, with a local pyannote pipeline folder
    python bench/asr.py --hf-model DIR       # baseline with real transformers Whisper weights
    python bench/asr.py --gpu                # GPU part (CUDA); merged into asr.json as "gpu"

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

GPU part (``--gpu``, the GPU machine, which has no Whisper or pyannote weights, no
faster-whisper/CTranslate2/PyAV and maybe no ffmpeg): under ``emulate_card(12 GiB)``,
- Whisper large-v3's architecture with random weights (d_model 1280, 32+32 layers, 128 mel bins,
  51866 tokens; tiny.en's tokenizer) in fp16 + SDPA, loaded through ``studio.models`` by the
  tab's own transformers engine (what ``choose_engine`` picks there), on the 30 s clip and on a
  ~10 min clip made by repeating it; every 30 s window decodes exactly ``--baseline-tokens``
  tokens (written into the model's generation config, so both sides decode the same amount);
- ours: VAD windows (Silero where faster-whisper is installed, else the energy VAD) packed to
  <= 30 s, batched, greedy through the static-cache decoder with the step as a CUDA graph,
  word timestamps by cross-attention DTW; stage times (encoder / decode steps / DTW) recorded;
- pyannote's SpeakerDiarization over random segmentation-3.0 PyanNet + WeSpeaker ResNet34,
  also through ``studio.models``, run in the same transcription (``diarize=True``), and alone;
- peak VRAM (``torch.cuda.max_memory_allocated``) of both together, target <= 6 GiB, and the
  real-time factor with diarization, target >= 50x on the 10 min clip;
- the same for ``--also`` architectures (large-v3-turbo: 4 decoder layers);
- the plain ``pipeline("automatic-speech-recognition")`` on the same large-v3 folder (fp16,
  SDPA, 30 s chunks with its default 5 s strides, batch 1, no VAD, no timestamps), greedy.
``--device cpu --arch large-v3-mini`` runs the same code on a CPU for a plumbing check.
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
    """pyannote.audio's sample clip, found without importing pyannote (which may be broken)."""
    import importlib.util

    spec = importlib.util.find_spec("pyannote.audio")
    d = Path(list(spec.submodule_search_locations)[0]) / "sample"
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--diarization", default="", help="local pyannote pipeline folder")
    ap.add_argument("--hf-model", default="", help="local transformers Whisper folder")
    ap.add_argument("--baseline-tokens", type=int, default=80,
                    help="fixed decoded tokens per 30 s chunk for random-weight models")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "asr.json"))
    g = ap.add_argument_group("GPU part")
    g.add_argument("--gpu", action="store_true", help="run the GPU part and merge it into --out")
    g.add_argument("--device", default="cuda", help="cpu: plumbing run of the GPU part")
    g.add_argument("--arch", default="large-v3",
                   choices=["large-v3", "large-v3-turbo", "distil-large-v3", "large-v3-mini"])
    g.add_argument("--also", default="large-v3-turbo",
                   help="comma-separated further architectures measured beside --arch")
    g.add_argument("--pyannote", default="real", choices=["real", "tiny"])
    g.add_argument("--long-minutes", type=float, default=10.0,
                   help="length of the long clip (the 30 s clip repeated)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="30 s chunks per forward (ours; default: the tab's default)")
    g.add_argument("--card-gib", type=float, default=12.0, help="emulated card size")
    g.add_argument("--tokenizer", default="", help="folder with tiny.en's tokenizer.json")
    args = ap.parse_args(argv)
    if getattr(args, "batch_size", 0) is None:
        from tabs.whisper.config import TranscribeConfig

        args.batch_size = TranscribeConfig.batch_size
    return args


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.gpu:
        gpu_main(a)
    else:
        cpu_main(a)


def cpu_main(a: argparse.Namespace) -> None:
    from studio.config import Settings
    from studio.context import build_studio
    from tabs.whisper.audio import load_audio
    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.diarization import PyannoteDiarizer
    from tabs.whisper.random_models import random_whisper_folder
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
        folder = random_whisper_folder(home / "tiny-en-random", "tiny.en", Path(model))
        note = ("random weights of tiny.en's architecture with its real tokenizer (no "
                "transformers Whisper weights offline): speed only, at a fixed "
                f"{a.baseline_tokens} decoded tokens per 30 s chunk; ours decoded "
                "the real transcript")
        tokens = a.baseline_tokens
    result["baseline"] = {"what": 'transformers pipeline("automatic-speech-recognition")',
                          "note": note, **baseline(folder, audio, tokens, a.repeats)}
    print("baseline:", json.dumps(result["baseline"]))
    result["speedup_rtf"] = round(result["ours"]["rtf"] / result["baseline"]["rtf"], 2)
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    result["gpu"] = old.get("gpu", "not run: python bench/asr.py --gpu on the GPU machine")
    write_json(out, result)
    studio.close()


def write_json(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


# ----- GPU part ----------------------------------------------------------------------------
GIB = 1024**3


def long_clip(audio, minutes: float, out: Path) -> Path:
    """The clip repeated to about `minutes`, as a 16 kHz wav file (the tab reads files)."""
    import numpy as np

    from tabs.whisper.audio import write_wav

    reps = max(1, round(minutes * 60 * SR / len(audio)))
    return write_wav(out, np.tile(audio, reps))


def register_random_diarizer(studio, arch: str):
    """A PyannoteDiarizer whose manager entry builds the random pipeline (no hub, no files)."""
    import torch

    from studio.models import ModelSpec
    from tabs.whisper.diarization import PyannoteDiarizer
    from tabs.whisper.random_models import random_pyannote_pipeline

    d = PyannoteDiarizer(studio, f"random:{arch}")
    if studio.models.is_registered(d.key):  # a second Whisper architecture in the same run
        return d
    studio.models.register(ModelSpec(
        key=d.key, title=f"pyannote {arch} (random weights)",
        load=lambda dev: random_pyannote_pipeline(arch).to(torch.device(dev)),
        estimate=int(0.2e9) if studio.device == "cuda" else 0,
        reserve=int(0.8e9) if studio.device == "cuda" else 0))
    return d


class Peak:
    """Peak allocated bytes on the GPU between enter and exit (None on a CPU)."""

    def __init__(self, cuda: bool):
        self.cuda, self.bytes = cuda, None

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / GIB, 3)


def guarded(what: str, fn) -> dict:
    """Run one stage; an error (an OOM on the emulated card, a missing package) is recorded in
    the results instead of losing the stages that worked."""
    try:
        return fn()
    except Exception as e:
        import traceback

        traceback.print_exc()
        print(f"{what} failed: {type(e).__name__}: {e}", flush=True)
        return {"error": f"{type(e).__name__}: {e}"}


def attention_of(svc, cfg) -> dict:
    """The attention the loaded model runs (read back, not assumed)."""
    from tabs.whisper.engines import attention_in_use

    engine, _ = svc.engine_for(cfg)
    with svc.studio.models.use(engine.key) as pipe:
        return attention_in_use(pipe.model)


def decoder_stats(svc, cfg) -> dict | None:
    """The static decoder's stage times (encode / decode steps / DTW) since the last reset."""
    engine, _ = svc.engine_for(cfg)
    with svc.studio.models.use(engine.key) as lw:
        d = getattr(lw, "decoder", None)
        return None if d is None else {k: round(v, 3) for k, v in d.stats.items()}


def reset_stats(svc, cfg) -> None:
    engine, _ = svc.engine_for(cfg)
    with svc.studio.models.use(engine.key) as lw:
        d = getattr(lw, "decoder", None)
        if d is not None:
            for k in d.stats:
                d.stats[k] = 0


def ours_asr(svc, folder: Path, clips: dict[str, Path], a, cuda: bool, arch: str,
             beam5: bool = True) -> dict:
    """The studio path without diarization: VAD, word timestamps, greedy; RTF and peak VRAM
    per clip; plus the tab's default beam 5 (the generate() path) on the 30 s clip."""
    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.engines import choose_engine

    cfg = TranscribeConfig(model=str(folder), beam_size=1, vad=True, word_timestamps=True,
                           diarize=False, batch_size=a.batch_size)
    t = svc.transcribe(clips["30s"], cfg)  # load + warm-up (graph capture)
    out: dict = {"what": f"Whisper {arch}: WhisperService.transcribe, file in, transcript out, "
                         "model through studio.models",
                 "engine": t.engine, "engine_line": t.notes[0],
                 "engine_for_large-v3_here": choose_engine("auto", svc.studio.device,
                                                           "large-v3")[1],
                 "dtype": "float16" if cuda else "float32",
                 "attention": attention_of(svc, cfg),
                 "batch_size_asked": a.batch_size, "beam_size": 1, "vad": True,
                 "word_timestamps": True}
    for name, path in clips.items():
        reset_stats(svc, cfg)
        with Peak(cuda) as pk:
            t, secs = timed(lambda p=path: svc.transcribe(p, cfg),
                            a.repeats if name == "30s" else 1)
        out[name] = {"seconds": round(secs, 3), "rtf": round(t.duration / secs, 2),
                     "segments": len(t.segments), "words": sum(len(s.words) for s in t.segments),
                     "peak_allocated_gib": gib(pk.bytes),
                     "notes": [n for n in t.notes if "window" in n or "VAD" in n],
                     "stage_seconds": decoder_stats(svc, cfg)}
        print("ours", arch, name, out[name], flush=True)

    def beam5_run() -> dict:
        c5 = TranscribeConfig(**{**cfg.__dict__, "beam_size": 5})
        with Peak(cuda) as pk:
            t, secs = timed(lambda: svc.transcribe(clips["30s"], c5), 1)
        return {"seconds": round(secs, 3), "rtf": round(t.duration / secs, 2),
                "peak_allocated_gib": gib(pk.bytes),
                "note": "beam 5 goes through transformers generate(), not the static decoder"}

    if beam5:
        out["30s_beam5"] = guarded("ours beam 5", beam5_run)
    return out


def ours_with_speakers(svc, folder: Path, clips: dict[str, Path], audios: dict, a, cuda: bool,
                       arch: str) -> dict:
    """Whisper and pyannote in one transcription (diarize=True): wall time and the peak VRAM of
    both; pyannote alone on the same audio for the split."""
    from tabs.whisper.config import TranscribeConfig

    cfg = TranscribeConfig(model=str(folder), beam_size=1, vad=True, word_timestamps=True,
                           diarize=True, batch_size=a.batch_size)
    d = register_random_diarizer(svc.studio, a.pyannote)
    nets = ("segmentation-3.0 PyanNet + WeSpeaker ResNet34" if a.pyannote == "real"
            else "tiny PyanNet + x-vector")
    both: dict = {"what": f"Whisper {arch} (random) + pyannote ({nets}, random) in one "
                          "transcription with diarize=True (VAD, word timestamps, beam 1), both "
                          "loaded through studio.models; diarization runs after the ASR",
                  "target_gib": 6.0, "target_rtf": 50.0}
    svc.transcribe(clips["30s"], cfg, diarizer=d)  # both loaded, warm
    for name, path in clips.items():
        with Peak(cuda) as pk:
            t0 = time.perf_counter()
            t = svc.transcribe(path, cfg, diarizer=d)
            secs = time.perf_counter() - t0
        both[name] = {"peak_allocated_gib": gib(pk.bytes), "seconds": round(secs, 3),
                      "rtf": round(t.duration / secs, 2),
                      "speakers_note": next((n for n in t.notes if "speaker" in n), ""),
                      "segments_with_speaker": sum(bool(s.speaker) for s in t.segments),
                      "notes": [n for n in t.notes if "window" in n]}
        print("together", arch, name, both[name], flush=True)
    with Peak(cuda) as pk:
        _, dsecs = timed(lambda: d.diarize(audios["long"]), 1)
    both["diarization_alone_long"] = {"seconds": round(dsecs, 3),
                                      "rtf": round(len(audios["long"]) / SR / dsecs, 2),
                                      "peak_allocated_gib": gib(pk.bytes)}
    print("diarization alone", both["diarization_alone_long"], flush=True)
    both["overlapped_long"] = guarded("overlap", lambda: overlapped(svc, cfg, clips, audios, d,
                                                                   cuda))
    print("overlapped", both["overlapped_long"], flush=True)
    both["resident_gib"] = {r.key: gib(r.size) for r in svc.studio.models.loaded()}
    peaks = [both[n]["peak_allocated_gib"] for n in clips]
    both["within_target"] = None if None in peaks else max(peaks) <= both["target_gib"]
    both["rtf_target_met"] = both["long"]["rtf"] >= both["target_rtf"]
    return both


def overlapped(svc, cfg, clips: dict, audios: dict, d, cuda: bool) -> dict:
    """What running pyannote beside the transcription would give (measured here with two
    threads, pyannote on its own CUDA stream; the service runs them one after the other)."""
    import threading

    import torch

    from tabs.whisper.config import TranscribeConfig

    box: dict = {}

    def diarize():
        if cuda:
            with torch.cuda.stream(torch.cuda.Stream()):
                box["turns"] = d.diarize(audios["long"])
            torch.cuda.synchronize()
        else:
            box["turns"] = d.diarize(audios["long"])

    asr_cfg = TranscribeConfig(**{**cfg.__dict__, "diarize": False})
    with Peak(cuda) as pk:
        t0 = time.perf_counter()
        th = threading.Thread(target=diarize)
        th.start()
        t = svc.transcribe(clips["long"], asr_cfg)
        th.join()
        secs = time.perf_counter() - t0
    return {"what": "ASR (diarize=False) and pyannote alone in two threads at once; not what "
                    "the service does today",
            "seconds": round(secs, 3), "rtf": round(t.duration / secs, 2),
            "peak_allocated_gib": gib(pk.bytes), "turns": len(box.get("turns") or [])}


def baseline_gpu(folder: Path, audios: dict, a, cuda: bool) -> dict:
    import torch
    from transformers import pipeline

    dtype = torch.float16 if cuda else torch.float32
    pipe = pipeline("automatic-speech-recognition", model=str(folder), device=a.device,
                    dtype=dtype)
    out: dict = {"what": 'transformers pipeline("automatic-speech-recognition", model=folder, '
                         f'dtype={dtype}); pipe(audio, chunk_length_s=30, '
                         'generate_kwargs={"num_beams": 1})',
                 "attention": getattr(pipe.model.config, "_attn_implementation", None),
                 "batch_size": 1, "beam_size": 1, "timestamps": False}

    def run(x):
        return pipe({"raw": x, "sampling_rate": SR}, chunk_length_s=30, batch_size=1,
                    generate_kwargs={"num_beams": 1})

    run(audios["30s"])  # warm-up
    for name, x in audios.items():
        with Peak(cuda) as pk:
            _, secs = timed(lambda x=x: run(x), a.repeats if name == "30s" else 1)
        out[name] = {"seconds": round(secs, 3), "rtf": round(len(x) / SR / secs, 2),
                     "peak_allocated_gib": gib(pk.bytes)}
        print("baseline", name, out[name], flush=True)
    return out


def versions() -> dict:
    import importlib.metadata as md

    got = {}
    for name in ("torch", "transformers", "pyannote.audio", "faster-whisper"):
        try:
            got[name] = md.version(name)
        except md.PackageNotFoundError:
            got[name] = None
    return got


def gpu_main(a: argparse.Namespace) -> None:
    import torch

    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import CpuProbe, CudaProbe, emulate_card
    from tabs.whisper.audio import load_audio
    from tabs.whisper.random_models import random_whisper_folder, whisper_tokenizer_dir
    from tabs.whisper.service import get_service

    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--gpu needs CUDA here; --device cpu --arch large-v3-mini is the plumbing run")
    tok = whisper_tokenizer_dir(a.tokenizer)
    if tok is None:
        sys.exit("no tiny.en tokenizer.json: give --tokenizer DIR or $STUDIO_WHISPER_TOKENIZER")
    wav = sample_files()[0]
    home = Path(tempfile.mkdtemp(prefix="asr-gpu-"))
    t0 = time.perf_counter()
    folder = random_whisper_folder(home / f"whisper-{a.arch}-random", a.arch, tok,
                                   dtype=torch.float16 if cuda else None, device=a.device,
                                   fixed_tokens=a.baseline_tokens)
    build_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.empty_cache()
        emulate_card(int(a.card_gib * GIB))
    audio = load_audio(wav)
    clips = {"30s": wav, "long": long_clip(audio, a.long_minutes, home / "long.wav")}
    audios = {"30s": audio, "long": load_audio(clips["long"])}
    studio = build_studio(Settings(home=home / "studio", profile="small",
                                   vram_budget=int(a.card_gib * GIB) if cuda else None),
                          probe=CudaProbe(0) if cuda else CpuProbe(), start_jobs=False)
    result: dict = {
        "device": device_name() if cuda else f"{device_name()} (plumbing run, not a result)",
        "emulated_card_gib": a.card_gib if cuda else None,
        "versions": versions(),
        "clips": {"30s": "pyannote.audio sample.wav, 30 s",
                  "long": f"the same clip repeated, {len(audios['long']) / SR / 60:.1f} min"},
        "model": f"Whisper {a.arch} architecture, random weights, tiny.en tokenizer "
                 f"(no transformers Whisper weights on the GPU machine); built and saved in "
                 f"{build_s:.1f} s",
        "fixed_tokens_per_chunk": a.baseline_tokens,
        "note": "speed and memory only: random weights decode nonsense, so no WER/DER here; "
                "both sides decode exactly fixed_tokens_per_chunk tokens per 30 s chunk "
                "(min_new_tokens = max_new_tokens in the model's generation config), greedy "
                "(beam 1) on both sides unless a key says otherwise",
    }
    svc = get_service(studio)
    try:
        result["ours"] = guarded("ours", lambda: ours_asr(svc, folder, clips, a, cuda, a.arch))
        result["together"] = guarded(
            "whisper + pyannote",
            lambda: ours_with_speakers(svc, folder, clips, audios, a, cuda, a.arch))
        for arch in [x for x in a.also.split(",") if x]:
            for r in svc.studio.models.loaded():  # the other Whisper off the card first
                if r.key.startswith("whisper:"):
                    svc.studio.models.evict(r.key)
            if cuda:
                torch.cuda.empty_cache()
            t0 = time.perf_counter()
            other = random_whisper_folder(home / f"whisper-{arch}-random", arch, tok,
                                          dtype=torch.float16 if cuda else None,
                                          device=a.device, fixed_tokens=a.baseline_tokens)
            print(f"built {arch} in {time.perf_counter() - t0:.1f} s", flush=True)
            result[f"ours_{arch}"] = guarded(
                f"ours {arch}", lambda o=other, n=arch: ours_asr(svc, o, clips, a, cuda, n,
                                                                 beam5=False))
            result[f"together_{arch}"] = guarded(
                f"{arch} + pyannote",
                lambda o=other, n=arch: ours_with_speakers(svc, o, clips, audios, a, cuda, n))
    finally:
        studio.close()
    if cuda:
        torch.cuda.empty_cache()
    result["baseline"] = guarded("baseline", lambda: baseline_gpu(folder, audios, a, cuda))
    ours, base = result["ours"], result["baseline"]
    result["speedup_rtf"] = {n: round(ours[n]["rtf"] / base[n]["rtf"], 2) for n in clips
                             if n in ours and n in base}
    tog = result.get("together", {})
    if "long" in tog and "long" in base:
        result["speedup_rtf"]["long_with_diarization_vs_plain_without"] = round(
            tog["long"]["rtf"] / base["long"]["rtf"], 2)
    result["targets"] = {
        "large-v3, VAD + word timestamps + diarization, 10 min, >= 50x real time":
            tog.get("long", {}).get("rtf"),
        "met_rtf": tog.get("rtf_target_met"),
        "peak <= 6 GiB (Whisper + pyannote)": max(
            [tog[n]["peak_allocated_gib"] or 0 for n in clips if n in tog] or [0]) or None,
        "met_peak": tog.get("within_target"),
    }
    out = Path(a.out)
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged["gpu"] = result
    write_json(out, merged)
    print(json.dumps(result, indent=1))
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    if failed:
        sys.exit(f"stages failed: {', '.join(failed)} (errors are in {out})")


if __name__ == "__main__":
    main()
