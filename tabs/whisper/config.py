"""Settings of one transcription, with defaults; the UI builds one of these from its widgets."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_SIZES = ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium",
               "medium.en", "large-v2", "large-v3", "large-v3-turbo", "distil-large-v3")
# On a GPU: large-v3-turbo by default (large-v3's encoder, 4 decoder layers instead of 32:
# about 8x faster decoding at similar accuracy, published), large-v3 where accuracy matters
# most, distil-large-v3 (2 decoder layers, English only) listed.
GPU_DEFAULT_MODEL = "large-v3-turbo"
ACCURATE_MODEL = "large-v3"
MODEL_NOTES = {
    "large-v3-turbo": "the GPU default: large-v3's encoder with 4 decoder layers, about 8x "
                      "faster decoding at similar accuracy",
    "large-v3": "the most accurate Whisper (32 decoder layers)",
    "distil-large-v3": "distilled large-v3, 2 decoder layers, English only",
}
COMPUTE_TYPES = ("int8", "int8_float16", "float16")
ENGINES = ("auto", "faster-whisper", "transformers")


@dataclass
class TranscribeConfig:
    """What to run and how. ``model`` is a size name (from the hub), a local CTranslate2 folder
    (faster-whisper) or a local transformers Whisper folder; empty = the profile's choice."""

    model: str = ""
    engine: str = "auto"
    compute_type: str = "int8"
    language: str | None = None  # None = detect
    beam_size: int = 5
    initial_prompt: str = ""
    hotwords: str = ""
    vad: bool = True
    word_timestamps: bool = True
    diarize: bool = True
    num_speakers: int | None = None  # exact count, or None = auto within min/max
    min_speakers: int | None = None
    max_speakers: int | None = None
    batch_size: int = 4  # transformers engine: 30 s chunks per forward pass (4: large-v3 +
    # pyannote stay under 6 GiB with word timestamps; 8 measured 7.47 GiB on a 10 min file)

    def validate(self) -> TranscribeConfig:
        if self.model and self.model not in MODEL_SIZES:
            from studio.safety import check_model_source

            # A folder whose pickles could run code is refused; CTranslate2's model.bin is not
            # a pickle and loads.
            self.model = check_model_source(self.model, label="Whisper model")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; one of {', '.join(ENGINES)}")
        if self.compute_type not in COMPUTE_TYPES:
            raise ValueError(f"compute type must be one of {', '.join(COMPUTE_TYPES)}")
        if not 1 <= self.beam_size <= 20:
            raise ValueError("beam size must be between 1 and 20")
        if self.language in ("", "auto"):
            self.language = None
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1")
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError("min speakers is more than max speakers")
        return self
