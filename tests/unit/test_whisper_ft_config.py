"""Whisper fine-tune settings: what "auto" picks, and a clear reason for every setting or input
that cannot work (before any job starts)."""

from __future__ import annotations

import pytest

from tabs.whisper_ft.config import WhisperFTConfig


def test_auto_method_learning_rate_and_glossary():
    assert WhisperFTConfig(base_model="openai/whisper-small").resolved_method() == "full"
    medium = WhisperFTConfig(base_model="/models/whisper-medium")
    assert medium.resolved_method() == "lora" and medium.resolved_lr() == 1e-3
    assert WhisperFTConfig().resolved_lr() == 1e-5
    g = WhisperFTConfig(glossary="Zorblax, Quindara\nzorblax,  Velmorant ,")
    assert g.glossary_terms() == ["Zorblax", "Quindara", "Velmorant"]


@pytest.mark.parametrize("changes, message", [
    ({"dataset": ""}, "prepare a dataset"),
    ({"base_model": " "}, "choose a base model"),
    ({"method": "qlora"}, "method must be one of auto, full, lora"),
    ({"language": "en; rm -rf"}, "language must be a code"),
    ({"max_steps": 0}, "steps must be at least 1"),
    ({"eval_steps": -1}, "cannot be negative"),
    ({"generation_max_tokens": 1000}, "at most 448 tokens"),
    ({"learning_rate": 5.0}, "learning rate must be in"),
])
def test_bad_settings_have_reasons(changes, message):
    cfg = WhisperFTConfig(**{"dataset": "wds-0123456789ab", **changes})
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_submit_refuses_unknown_datasets_and_models(studio, tmp_path):
    from tabs.whisper_ft import service

    with pytest.raises(ValueError, match="not a dataset id"):
        service.submit(studio, WhisperFTConfig(dataset="../../runs"))
    with pytest.raises(ValueError, match="no dataset wds-0123456789ab"):
        service.submit(studio, WhisperFTConfig(dataset="wds-0123456789ab"))
    folder = service.datasets_root(studio) / "wds-0123456789ab"
    folder.mkdir(parents=True)
    (folder / "manifest.jsonl").write_text('{"audio": "pieces/00000.wav", "text": "hi", '
                                           '"seconds": 1.0, "source": "a", "split": "train"}\n')
    with pytest.raises(ValueError, match="Base model: no such file or folder"):
        service.submit(studio, WhisperFTConfig(dataset="wds-0123456789ab",
                                               base_model=str(tmp_path / "nope")))
    assert studio.jobs.list_runs(service.KIND) == []  # nothing was queued


# ----- the memory plan: fastest settings that fit (no GPU needed: it is arithmetic) -----------
GIB = 1024**3


def _cfg(base, **kw):
    return WhisperFTConfig(base_model=base, dataset="wds-0123456789ab", batch_size=8, **kw)


def test_memory_estimate_matches_the_h200_measurements():
    """The estimate against every peak the bench measured on the H200 for a studio plan
    (bench/results/whisper_ft.json: batch 8, 64-token labels, each run's own plan): never
    below what was measured (less 3%), and not far above it."""
    import json
    from pathlib import Path

    from tabs.whisper_ft.train import ARCHS, Arch, estimate_bytes

    res = json.loads((Path(__file__).parents[2] / "bench" / "results"
                      / "whisper_ft.json").read_text())["results"]
    runs = [(arch, "", r["studio"]) for arch, r in res.items()]
    runs += [("medium", name, r) for name, r in res["medium"]["ablations"].items()]
    checked = 0
    for arch, name, r in runs:
        if not r.get("plan") or r.get("oom"):
            continue
        from bench.whisper_ft import ABLATIONS

        changes = {k: v for k, v in ABLATIONS.get(name, {}).items() if k != "lora_input_cast"}
        cfg = _cfg(f"openai/whisper-{arch}", **changes)
        plan = r["plan"]
        est = estimate_bytes(cfg, plan["checkpointed_encoder_layers"],
                             plan["checkpointed_decoder_layers"],
                             plan["optimizer"] == "adamw_bnb_8bit", Arch(*ARCHS[arch]),
                             label_tokens=64) / GIB
        assert 0.97 * r["peak_gib"] <= est <= 1.2 * r["peak_gib"], (arch, name, est, r)
        checked += 1
    assert checked >= 4


def test_plan_checkpoints_only_the_layers_the_budget_needs_and_prefers_fused_adamw():
    from tabs.whisper_ft.train import ARCHS, MARGIN, Arch, plan_memory

    medium = Arch(*ARCHS["medium"])
    plan = plan_memory(_cfg("openai/whisper-medium"), "cuda", 12 * GIB, medium)
    assert plan.optimizer == "adamw_torch_fused"  # LoRA's optimizer state is small
    assert 0 < plan.ckpt_encoder < medium.enc_layers and plan.ckpt_decoder == 0
    assert plan.estimate <= MARGIN * 12 * GIB
    # one layer fewer would not fit: the plan recomputes no more than it must
    fewer = plan_memory(_cfg("openai/whisper-medium", gradient_checkpointing="off"), "cuda",
                        12 * GIB, medium)
    assert fewer.estimate > MARGIN * 12 * GIB
    roomy = plan_memory(_cfg("openai/whisper-medium"), "cuda", 40 * GIB, medium)
    assert (roomy.ckpt_encoder, roomy.ckpt_decoder) == (0, 0)  # room: no recomputation
    # dropout on the adapters keeps a copy of each adapter's input: more layers recompute
    drop = plan_memory(_cfg("openai/whisper-medium", lora_dropout=0.05), "cuda", 12 * GIB,
                       medium)
    assert drop.ckpt_encoder > plan.ckpt_encoder
    assert "memory plan: gradient checkpointing on" in plan.notes[0]


def test_plan_takes_8bit_adamw_only_when_the_optimizer_state_would_not_fit():
    pytest.importorskip("bitsandbytes")
    from tabs.whisper_ft.train import ARCHS, Arch, plan_memory

    small, medium = Arch(*ARCHS["small"]), Arch(*ARCHS["medium"])
    assert plan_memory(_cfg("openai/whisper-small"), "cuda", 12 * GIB,
                       small).optimizer == "adamw_torch_fused"
    # medium full fine-tune: fp32 Adam state alone is 6 GB; 8-bit AdamW and checkpointing
    full = plan_memory(_cfg("openai/whisper-medium", method="full"), "cuda", 12 * GIB, medium)
    assert full.optimizer == "adamw_bnb_8bit" and full.ckpt_encoder == medium.enc_layers
    # the user's explicit choices are kept
    forced = plan_memory(_cfg("openai/whisper-small", optimizer="adamw_8bit",
                              gradient_checkpointing="on"), "cuda", 12 * GIB, small)
    assert forced.optimizer == "adamw_bnb_8bit"
    assert (forced.ckpt_encoder, forced.ckpt_decoder) == (12, 12)
    cpu = plan_memory(_cfg("openai/whisper-small"), "cpu", None)
    assert cpu.optimizer == "adamw_torch" and not cpu.checkpointing


def test_partial_checkpointing_sets_only_the_planned_layers():
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from tabs.whisper_ft.train import MemoryPlan, prepare_for_training

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(
        d_model=16, encoder_layers=3, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64,
        max_source_positions=1500, max_target_positions=32, decoder_start_token_id=1,
        eos_token_id=2, pad_token_id=2, bos_token_id=2))
    cfg = _cfg("openai/whisper-medium", spec_augment=False)  # LoRA
    model, notes = prepare_for_training(model, cfg, MemoryPlan("adamw_torch", 2, 1))
    m = model.get_base_model()
    assert [x.gradient_checkpointing for x in m.model.encoder.layers] == [True, True, False]
    assert [x.gradient_checkpointing for x in m.model.decoder.layers] == [True, False]
    assert "gradient checkpointing on 2/3 encoder and 1/2 decoder layers" in notes
    model.train()
    out = model(input_features=torch.randn(2, 80, 3000),
                labels=torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]]))
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    # adapters in checkpointed and plain layers of both stacks all get gradients
    for part in ("encoder.layers.0.", "encoder.layers.2.", "decoder.layers.0.",
                 "decoder.layers.1."):
        g = [v for n, v in grads.items() if part in n and "lora_B" in n]  # A's is 0: B = 0
        assert g and all(v is not None and v.abs().sum() > 0 for v in g), part
