"""Whisper fine-tune data: espeak-ng recordings in a zip, a long recording cut at its SRT cues,
manifests, a corrected Transcribe-tab transcript, and every bad-input case with its reason."""

from __future__ import annotations

import json
import shutil
import wave
import zipfile

import numpy as np
import pytest

from tabs.whisper.audio import load_audio, write_wav
from tabs.whisper_ft import metrics
from tabs.whisper_ft.data import DataError, load_pieces, prepare_dataset
from tabs.whisper_ft.tiny import SCRIPT, espeak, make_recordings, make_zip

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    return d, make_recordings(d, voices=["en-us", "en-gb+m3"])


def reasons(summary):
    return {p.source: p.reason for p in summary.rejected}


def test_zip_of_recordings_becomes_a_checked_dataset(recordings, tmp_path):
    folder, recs = recordings
    z = make_zip(folder, tmp_path / "meeting.zip")
    s = prepare_dataset(tmp_path / "ds", [z], heldout_fraction=0.25, seed=1)
    assert s.pieces == len(recs) == 8 and not s.rejected
    assert (s.train, s.heldout) == (6, 2)
    assert s.speakers == {"en-us": 4, "en-gb_m3": 4}  # the voice folder is the speaker
    assert any("22050 Hz converted to 16 kHz" in n for n in s.notes)
    assert 0 < s.hours < 0.01 and s.vocabulary == len(set(metrics.normalise(
        " ".join(SCRIPT)).split()))
    assert {"Quindara", "Velmorant", "Tavishek"} <= set(s.name_like)
    pieces = load_pieces(s.folder)
    assert sorted(p.text for p in pieces) == sorted(SCRIPT * 2)
    with wave.open(str(tmp_path / "ds" / s.id / pieces[0].audio)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
    assert "8 pieces" in s.markdown() and "held out" in s.markdown()


def long_recording(tmp_path, n_turns=12, gap=1.5):
    """~45 s of espeak turns separated by silence, and its SRT."""
    parts, cues, t = [], [], 0.0
    for i in range(n_turns):
        text = SCRIPT[i % len(SCRIPT)]
        a = load_audio(espeak(text, "en-us", tmp_path / f"turn{i}.wav")) * 0.8
        cues.append((t, t + len(a) / 16000, text))
        parts += [a, np.zeros(int(gap * 16000), np.float32)]
        t += len(a) / 16000 + gap
    audio = np.concatenate(parts)
    from tabs.whisper.formats import timestamp

    srt = "\n".join(f"{i + 1}\n{timestamp(a)} --> {timestamp(b)}\n[Ana] {text}\n"
                    for i, (a, b, text) in enumerate(cues))
    return audio, cues, srt


def test_long_recording_is_cut_at_cue_boundaries_into_pieces_of_30_s_at_most(tmp_path):
    audio, cues, srt = long_recording(tmp_path)
    up = tmp_path / "up"
    write_wav(up / "standup.wav", audio)
    (up / "standup.srt").write_text(srt)
    s = prepare_dataset(tmp_path / "ds", [up / "standup.wav", up / "standup.srt"],
                        heldout_fraction=0)
    pieces = load_pieces(s.folder)
    assert len(audio) / 16000 > 40 and len(pieces) >= 2 and not s.rejected
    assert all(p.seconds <= 30.0 for p in pieces)
    assert " ".join(p.text for p in pieces) == " ".join(c[2] for c in cues)  # nothing lost
    starts = [c[0] for c in cues]
    for p in pieces:  # every cut lies in the silence around a cue, not inside speech
        first = min(starts, key=lambda x: abs(x - p.start - 0.15))
        assert p.start <= first + 1e-6 and first - p.start <= 0.16
    assert s.speakers == {"Ana": len(pieces)}  # from the Transcribe tab's "[Name]" prefix
    assert any("no held-out" in n for n in s.notes)


def test_manifests_csv_and_jsonl(recordings, tmp_path):
    folder, recs = recordings
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i, (wav, _, _) in enumerate(recs[:4]):
            zf.write(wav, f"audio/{i}.wav")
        zf.writestr("list.csv", "path,text,speaker\n" + "".join(
            f"audio/{i}.wav,\"{t}\",Bo\n" for i, (_, t, _) in enumerate(recs[:2])))
        zf.writestr("more.jsonl", "".join(json.dumps({"audio": f"audio/{i}.wav", "text": t})
                                          + "\n" for i, (_, t, _) in enumerate(recs[2:4], 2)))
    s = prepare_dataset(tmp_path / "ds", [z], heldout_fraction=0.25)
    assert s.pieces == 4 and not s.rejected, s.rejected
    assert s.speakers == {"Bo": 2, "unknown": 2}


def test_each_bad_input_has_its_reason(recordings, tmp_path):
    folder, recs = recordings
    up = tmp_path / "up"
    up.mkdir()
    shutil.copy(recs[0][0], up / "good.wav")
    (up / "good.txt").write_text(recs[0][1])
    shutil.copy(recs[1][0], up / "no_text.wav")  # missing transcript
    (up / "orphan.txt").write_text("a transcript without audio")
    (up / "broken.wav").write_bytes(b"RIFF\x00\x00junk" * 20)
    (up / "broken.txt").write_text("hello")
    write_wav(up / "quiet.wav", np.zeros(16000 * 2, np.float32))
    (up / "quiet.txt").write_text("nothing is said here")
    shutil.copy(recs[2][0], up / "blank.wav")
    (up / "blank.txt").write_text("   \n")
    long = np.concatenate([load_audio(recs[3][0])] * 10)  # ~40 s, untimed text
    write_wav(up / "long.wav", long)
    (up / "long.txt").write_text(" ".join([recs[3][1]] * 10))
    write_wav(up / "onecue.wav", long)
    (up / "onecue.vtt").write_text("WEBVTT\n\n00:00:00.000 --> 00:00:34.000\n<v Al>far too "
                                   "long for one piece</v>\n")
    (up / "notes.pdf").write_bytes(b"%PDF")
    (up / "rows.csv").write_text("path,text\n../../etc/passwd.wav,steal\nmissing.wav,hi\n"
                                 "good.wav,\n")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    s = prepare_dataset(tmp_path / "ds", [*up.iterdir(), evil], heldout_fraction=0)
    r = reasons(s)
    assert s.pieces == 1  # only good.wav
    assert "missing transcript" in r["no_text.wav"]
    assert "transcript without audio" in r["orphan.txt"]
    assert "unreadable" in r["broken.wav"]
    assert "silent" in r["quiet.wav"]
    assert "empty text" in r["blank.wav"]
    assert "piece over 30 s" in r["long.wav"] and "no times" in r["long.wav"]
    assert "piece over 30 s" in r["onecue.wav 0:00.0"] and "split that cue" in \
        r["onecue.wav 0:00.0"]
    assert "not audio" in r["notes.pdf"]
    assert "leaves the upload" in r["rows.csv row 2"]
    assert "no such audio file" in r["rows.csv row 3"]
    assert "empty text" in r["rows.csv row 4"]
    assert "escapes the upload" in r["../escape.txt"]
    assert not (tmp_path / "ds" / "escape.txt").exists()
    with pytest.raises(DataError, match="no usable piece"):
        prepare_dataset(tmp_path / "ds2", [up / "quiet.wav", up / "quiet.txt"])


def test_corrected_transcribe_tab_transcript_becomes_a_dataset(studio, tmp_path):
    """Each segment of a transcript the user corrected (text edited, speaker renamed) in the
    Transcribe tab becomes one (audio, text) pair."""
    from tabs.whisper.playback import save_recording
    from tabs.whisper.service import get_service
    from tabs.whisper.transcript import Segment, Transcript
    from tabs.whisper_ft import service

    audio, cues, _ = long_recording(tmp_path, n_turns=3)
    svc = get_service(studio)
    t = Transcript(segments=[Segment(a, b, "model text", "SPEAKER_00") for a, b, _ in cues],
                   duration=len(audio) / 16000, source="standup.wav")
    t.id = svc.new_id()
    save_recording(audio, svc.root / t.id)
    svc.save(t)
    t.segments[1].text = "Send the report to Quindara by Friday."  # the user's correction
    t.rename("SPEAKER_00", "Ana")
    svc.save(t, t.id)
    s = service.dataset_from_transcript(studio, t.id, heldout_fraction=0.34)
    pieces = load_pieces(s.folder)
    assert [p.text for p in sorted(pieces, key=lambda p: p.start)][1] == \
        "Send the report to Quindara by Friday."
    assert len(pieces) == 3 and s.speakers == {"Ana": 3} and s.heldout == 1
    for p, (a, b, _) in zip(sorted(pieces, key=lambda p: p.start), cues, strict=True):
        assert abs(p.seconds - (b - a)) < 0.35
    with pytest.raises(ValueError, match="no transcript"):
        service.dataset_from_transcript(studio, "nope")
    with pytest.raises(ValueError, match="not a dataset id"):
        service.dataset_folder(studio, "../../etc")


def test_wer_glossary_recall_and_most_changed():
    refs = ["Send the report to Quindara by Friday.", "Zorblax will chair it."]
    before = ["send the report to quinn dara by friday", "sorb lacks will chair it"]
    after = ["Send the report to Quindara by Friday!", "Zorblax will chair it."]
    assert metrics.wer(refs, after) == 0.0
    assert metrics.wer(refs, before) == pytest.approx(4 / 11)  # 2 subs + 2 insertions
    g0 = metrics.glossary_recall(["Quindara", "Zorblax", "Tavishek"], refs, before)
    g1 = metrics.glossary_recall(["Quindara", "Zorblax", "Tavishek"], refs, after)
    assert (g0["recall"], g1["recall"]) == (0.0, 1.0)
    assert g1["not_in_heldout"] == ["Tavishek"]
    rows = metrics.most_changed(refs, before, after)
    assert rows[0]["reference"] == refs[1] and rows[0]["change"] == -0.5
