"""Whisper tab logic without models: speakers, segments, subtitle formats, renames, post-edit,
engine choice, bad input, the wav decoder used without PyAV, and click-to-play cuts. Subtitles are
checked by parsing them with pysrt and webvtt-py."""

from __future__ import annotations

import ast
import json
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from tabs.whisper import engines, formats
from tabs.whisper.audio import AudioError, load_audio
from tabs.whisper.config import TranscribeConfig
from tabs.whisper.engines import choose_engine, model_format
from tabs.whisper.postedit import Edit, apply_edits, parse_reply, propose_edits
from tabs.whisper.speakers import Turn, assign_speakers, merge_words, rename_ids, speaker_for
from tabs.whisper.transcript import Segment, Transcript, Word


def W(s, e, t, p=0.9):
    return Word(s, e, t, p)


TURNS = [Turn(0.0, 2.0, "A"), Turn(2.0, 4.0, "B"), Turn(5.0, 6.0, "A")]


def test_each_word_takes_the_speaker_it_overlaps_most():
    words = [W(0.1, 0.5, " hi"), W(1.8, 2.6, " there"),  # 0.2 s of A, 0.6 s of B -> B
             W(1.5, 2.1, " so"),  # 0.5 s of A, 0.1 s of B -> A
             W(4.3, 4.6, " gap"),  # no overlap: B ends 0.3 s before, A starts 0.4 s after
             W(9.0, 9.5, " far")]  # no turn within 1 s -> unlabelled
    got = [w.speaker for w in assign_speakers(words, TURNS)]
    assert got == ["A", "B", "A", "B", None]
    # overlap is summed over a speaker's turns
    assert speaker_for(0.0, 3.0, [Turn(0, 1, "A"), Turn(1, 1.5, "B"), Turn(1.5, 2.5, "A"),
                                  Turn(2.5, 3, "B")]) == "A"


def test_words_merge_into_segments_at_speaker_changes_gaps_and_length():
    words = [W(0.0, 0.4, " Hello", 0.8), W(0.5, 0.9, " there.", 1.0),
             W(1.0, 1.3, " Hi", 0.5), W(3.0, 3.3, " again")]
    for w, spk in zip(words, ["A", "A", "B", "B"], strict=True):
        w.speaker = spk
    segs = merge_words(words, max_gap=1.0)
    assert [(s.speaker, s.text, s.start, s.end) for s in segs] == [
        ("A", "Hello there.", 0.0, 0.9), ("B", "Hi", 1.0, 1.3), ("B", "again", 3.0, 3.3)]
    assert segs[0].confidence == 0.9
    long = [W(i * 0.3, i * 0.3 + 0.25, " word") for i in range(40)]
    segs = merge_words(long, max_chars=84, max_seconds=7.0)
    assert all(len(s.text) <= 84 and s.end - s.start <= 7.0 for s in segs)
    assert sum(len(s.words) for s in segs) == 40


def test_speaker_ids_follow_first_appearance():
    turns = rename_ids([Turn(3, 4, "spk7"), Turn(0, 1, "spk2"), Turn(5, 6, "spk7")])
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01"]


def sample_transcript() -> Transcript:
    segs = [Segment(0.0, 1.5, "Hello there.", "SPEAKER_00", [W(0, 0.6, " Hello"),
                                                             W(0.7, 1.5, " there.")], 0.9),
            Segment(61.25, 3725.5, "Fine & <you>?", "SPEAKER_01", [], None)]
    return Transcript(segs, language="en", duration=3726.0, source="talk.wav")


def test_srt_and_vtt_match_hand_written_files_and_parse():
    import pysrt
    import webvtt

    t = sample_transcript()
    assert formats.to_srt(t) == ("1\n00:00:00,000 --> 00:00:01,500\n[SPEAKER_00] Hello there.\n"
                                 "\n2\n00:01:01,250 --> 01:02:05,500\n[SPEAKER_01] Fine & <you>?"
                                 "\n")
    assert formats.to_vtt(t) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n<v SPEAKER_00>Hello "
                                 "there.</v>\n\n01:01.250 --> 01:02:05.500\n".replace(
                                     "01:01.250", "00:01:01.250")
                                 + "<v SPEAKER_01>Fine &amp; &lt;you&gt;?</v>\n")
    subs = pysrt.from_string(formats.to_srt(t))
    assert [(s.start.ordinal, s.end.ordinal) for s in subs] == [(0, 1500), (61250, 3725500)]
    vtt = webvtt.from_string(formats.to_vtt(t))
    assert [c.voice for c in vtt] == ["SPEAKER_00", "SPEAKER_01"]
    assert vtt[1].start == "00:01:01.250"


def test_rename_updates_every_export(tmp_path):
    t = sample_transcript()
    t.rename("SPEAKER_00", "Diane")
    t.rename("SPEAKER_01", "Sheila")
    t.rename("Sheila", "Sheila T.")  # by current name too
    outs = {f: formats.export(t, f, tmp_path).read_text() for f in formats.FORMATS}
    assert "[Diane] Hello there." in outs["srt"] and "<v Sheila T.>" in outs["vtt"]
    assert "[0:00] Diane: Hello there." in outs["txt"]
    assert "[1:01] Sheila T.: Fine & <you>?" in outs["txt"]
    data = json.loads(outs["json"])
    assert data["segments"][0]["speaker"] == "SPEAKER_00"
    assert data["segments"][0]["speaker_name"] == "Diane"
    assert data["segments"][0]["words"][1] == {"start": 0.7, "end": 1.5, "text": " there.",
                                               "probability": 0.9, "speaker": None,
                                               "speaker_name": ""}
    assert data["speakers"] == [{"id": "SPEAKER_00", "name": "Diane"},
                                {"id": "SPEAKER_01", "name": "Sheila T."}]
    with pytest.raises(ValueError, match="no speaker"):
        t.rename("SPEAKER_09", "x")
    with pytest.raises(ValueError, match="empty"):
        t.rename("Diane", "  ")
    with pytest.raises(ValueError, match="unknown export format"):
        formats.export(t, "docx", tmp_path)


class FakeLLM:
    """Stands in for a `studio.llm` engine: answers with canned numbered lines."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    def chat(self, messages, settings=None, stop_event=None):
        self.prompts.append(messages)

        class R:
            text = self.replies.pop(0)
        return R()


def test_postedit_changes_text_only_and_rejects_rewrites():
    segs = [Segment(0, 1, "i met dian in new jersey", "SPEAKER_00",
                    [W(0, .2, " i"), W(.2, .4, " met"), W(.4, .6, " dian"), W(.6, .7, " in"),
                     W(.7, .8, " new"), W(.8, 1, " jersey")]),
            Segment(1, 2, "hello", "SPEAKER_01"),
            Segment(2, 3, "we shipped it", "SPEAKER_00")]
    t = Transcript(segs)
    llm = FakeLLM(["1| I met Diane in New Jersey.\n2| Here is a poem about summer instead!",
                   "Sure! 1| nothing\n3| We shipped it."])
    edits = propose_edits(t, llm, ["Diane"], chunk_size=2)
    assert "Diane" in llm.prompts[0][1]["content"]
    assert [(e.index, e.new) for e in edits] == [(0, "I met Diane in New Jersey."),
                                                (2, "We shipped it.")]
    new = apply_edits(t, edits)
    assert [s.text for s in new.segments] == ["I met Diane in New Jersey.", "hello",
                                              "We shipped it."]
    assert [(s.start, s.end, s.speaker) for s in new.segments] == [
        (s.start, s.end, s.speaker) for s in segs]
    assert [w.text for w in new.segments[0].words][2] == " Diane"
    assert [(w.start, w.end) for w in new.segments[0].words] == [
        (w.start, w.end) for w in segs[0].words]
    assert parse_reply("7| x\n2: y", {2}) == {2: "y"}
    assert apply_edits(t, [Edit(1, "stale", "X")]).segments[1].text == "hello"


def test_engine_choice_and_config_validation(tmp_path):
    assert choose_engine("auto", "cpu", "tiny.en")[0] == "faster-whisper"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "whisper"}')
    assert model_format(str(hf)) == "hf"
    assert choose_engine("auto", "cpu", str(hf))[0] == "transformers"
    with pytest.raises(ValueError, match="transformers model"):
        choose_engine("faster-whisper", "cpu", str(hf))
    with pytest.raises(ValueError, match="unknown Whisper model"):
        choose_engine("auto", "cpu", "gigantic")
    with pytest.raises(ValueError, match="beam size"):
        TranscribeConfig(beam_size=0).validate()
    with pytest.raises(ValueError, match="min speakers"):
        TranscribeConfig(min_speakers=3, max_speakers=2).validate()
    assert TranscribeConfig(language="auto").validate().language is None


def _write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_bad_inputs_give_clear_messages(tmp_path):
    cases = {
        "missing": (tmp_path / "nope.wav", "no such file"),
        "empty": (tmp_path / "empty.mp3", "empty"),
        "corrupt": (tmp_path / "corrupt.wav", "could not be decoded"),
        "unsupported": (tmp_path / "notes.pdf", "not an audio or video file"),
        "silent": (_write_wav(tmp_path / "silent.wav", np.zeros(32000)), "silent"),
        "short": (_write_wav(tmp_path / "click.wav", np.full(100, 0.5)), "too short"),
    }
    cases["empty"][0].write_bytes(b"")
    cases["corrupt"][0].write_bytes(b"RIFF\x00\x00garbage" * 50)
    cases["unsupported"][0].write_bytes(b"%PDF-1.4")
    video = tmp_path / "silent_film.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=black:s=32x32:d=1", str(video)], check=True)
    cases["no audio track"] = (video, "no audio track")
    for name, (path, msg) in cases.items():
        with pytest.raises(AudioError, match=msg):
            load_audio(path)
        assert name


def test_video_with_sound_decodes(tmp_path):
    clip = tmp_path / "clip.webm"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=f=440:d=1.5",
                    "-f", "lavfi", "-i", "color=c=black:s=32x32:d=1.5", "-shortest",
                    "-c:a", "libopus", str(clip)], check=True)
    audio = load_audio(clip)
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - 1.5) < 0.1


def test_without_faster_whisper_the_transformers_engine_is_chosen(monkeypatch, tmp_path):
    """The GPU machine (CUDA 13) has no faster-whisper/CTranslate2: a size name must go to the
    transformers engine, and a CTranslate2 folder must say what to install."""
    monkeypatch.setattr(engines, "faster_whisper_missing", lambda: "ctranslate2 is not installed")
    name, why = choose_engine("auto", "cuda", "large-v3")
    assert name == "transformers" and "fp16" in why and "not installed" in why
    assert choose_engine("auto", "cpu", "tiny.en")[0] == "transformers"
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="pip install faster-whisper"):
        choose_engine("auto", "cuda", str(ct2))
    with pytest.raises(ValueError, match="transformers engine"):
        choose_engine("faster-whisper", "cuda", "large-v3")


def test_wav_decodes_without_pyav(monkeypatch, tmp_path):
    """Where PyAV is missing, PCM wav still decodes (resampled, mixed to mono); other formats
    say what is missing."""
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    t = np.arange(44100 * 2) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = (np.stack([tone, tone], axis=1) * 32767).astype("<i2")
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(44100)
        f.writeframes(stereo.tobytes())
    audio = load_audio(path)
    assert audio.dtype == np.float32 and abs(len(audio) - 32000) <= 1
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    assert np.abs(audio[1000:31000] - ref[1000:31000]).max() < 0.01
    mp3 = tmp_path / "talk.mp3"
    mp3.write_bytes(b"ID3" * 100)
    with pytest.raises(AudioError, match="needs PyAV"):
        load_audio(mp3)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage" * 50)
    with pytest.raises(AudioError, match="could not be decoded"):
        load_audio(bad)


def test_play_cut_starts_at_the_segment_in_a_long_recording(tmp_path):
    """A click cuts `PLAY_WINDOW_S` from the segment start out of the saved 16 kHz copy by
    seeking: the samples are the recording's own from that time, also an hour in, and the
    cut takes milliseconds, not a pass over the whole file."""
    import time

    from tabs.whisper.playback import KEEP_CLIPS, PLAY_WINDOW_S, cut_from, save_recording

    rng = np.random.default_rng(0)
    minutes = 20
    audio = (rng.standard_normal(minutes * 60 * 16000) * 0.2).astype(np.float32)
    rec = save_recording(audio, tmp_path / "t1")
    for start in (0.0, 1000.55, minutes * 60 - 30.0):
        t0 = time.perf_counter()
        clip = cut_from(rec, start, tmp_path / "t1" / "clips")
        assert time.perf_counter() - t0 < 1.0
        got = load_audio(clip)
        first = round(start * 16000)
        want = np.clip(audio[first:first + len(got)], -1, 1)
        assert len(got) == min(PLAY_WINDOW_S * 16000, len(audio) - first)
        assert np.abs(got - want).max() < 2e-4  # 16-bit rounding only
    assert cut_from(rec, 1000.55, tmp_path / "t1" / "clips").name == "from_001000550.wav"
    for k in range(12):  # clicking through many segments keeps only the newest cuts
        cut_from(rec, 10.0 + k, tmp_path / "t1" / "clips", seconds=1.0)
    kept = sorted(p.name for p in (tmp_path / "t1" / "clips").glob("from_*.wav"))
    assert len(kept) == KEEP_CLIPS and kept[-1] == "from_000021000.wav"
    assert "from_000000000.wav" not in kept and "from_000010000.wav" not in kept
    with pytest.raises(ValueError, match="past the end"):
        cut_from(rec, minutes * 60 + 5.0, tmp_path / "t1" / "clips")
    with pytest.raises(ValueError, match="no saved recording"):
        cut_from(tmp_path / "none" / "audio.wav", 0.0, tmp_path / "none")


def test_logic_modules_do_not_import_gradio():
    for path in Path("tabs/whisper").glob("*.py"):
        if path.name == "ui.py":
            continue
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(n.split(".")[0] == "gradio" for n in names), path
