"""Tiny GPT model: the KV cache changes nothing but speed, the causal mask hides the future,
and perplexity is exp(mean NLL)."""

from __future__ import annotations

import math

import pytest
import torch

from tabs.tinygpt.metrics import perplexity, token_nll, window_perplexity
from tabs.tinygpt.model import GPT, POS_SCHEMES, GPTConfig, generate


def tiny_model(pos: str, seed: int = 0, block_size: int = 48) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=61, block_size=block_size, n_layer=2, n_head=4, n_embd=32,
                          pos=pos))
    # Larger weights than the 0.02 init, so the logits are far from uniform and argmax ties
    # (which could hide a difference) cannot happen.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_kv_cache_gives_the_same_greedy_tokens(pos):
    model = tiny_model(pos)
    prompt = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(1))
    with_cache = generate(model, prompt, 30, temperature=0, use_cache=True)
    without = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 37)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_kv_cache_gives_the_same_sampled_tokens(pos):
    # Sampling with the same random stream: varied tokens, so a cache bug cannot hide behind a
    # random model that repeats one token greedily.
    model = tiny_model(pos)
    prompt = torch.randint(0, 61, (1, 5), generator=torch.Generator().manual_seed(4))
    a = generate(model, prompt, 40, temperature=1.0, top_k=20,
                 generator=torch.Generator().manual_seed(5))
    b = generate(model, prompt, 40, temperature=1.0, top_k=20, use_cache=False,
                 generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert len(set(a[0, 5:].tolist())) > 5


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_kv_cache_logits_match_a_full_forward(pos):
    model = tiny_model(pos)
    seq = torch.randint(0, 61, (1, 20), generator=torch.Generator().manual_seed(2))
    full, _ = model(seq)
    cache = model.new_cache(1, 20)
    prefill, _ = model(seq[:, :12], cache=cache)  # prompt at once, then the rest one by one
    steps = [model(seq[:, i:i + 1], cache=cache)[0] for i in range(12, 20)]
    cached = torch.cat([prefill] + steps, dim=1)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_causal_mask_hides_the_future(pos):
    model = tiny_model(pos)
    seq = torch.randint(0, 61, (1, 24), generator=torch.Generator().manual_seed(3))
    changed = seq.clone()
    changed[0, 15:] = (changed[0, 15:] + 7) % 61  # rewrite every token from position 15 on
    a, _ = model(seq)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=1e-6)  # earlier: unchanged
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 1e-2  # later positions do see the change


def test_weight_tying_shares_the_embedding():
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


def test_learned_positions_refuse_to_go_past_the_context():
    model = tiny_model("learned", block_size=16)
    with pytest.raises(ValueError, match="learned positions"):
        model(torch.zeros(1, 17, dtype=torch.long))
    tiny_model("rope", block_size=16)(torch.zeros(1, 32, dtype=torch.long))  # RoPE can


def test_learned_positions_generate_past_the_context_by_cropping_it():
    """200 new tokens from a 16-position model (the tab's default length used to fail): each
    token past the context is the one the model picks from the last 16 tokens alone."""
    model = tiny_model("learned", block_size=16)
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    for use_cache in (True, False):
        out = generate(model, prompt, 200, temperature=0.0, use_cache=use_cache)
        assert out.shape == (1, 205)
        for t in (16, 40, 204):  # past the context: the last 16 tokens decide
            logits, _ = model(out[:, t - 16:t], last_only=True)
            assert out[0, t].item() == logits[0, -1].argmax().item()
    with pytest.raises(ValueError, match="longer than the 16 positions"):
        generate(model, torch.zeros(1, 17, dtype=torch.long), 4)


def test_perplexity_is_exp_of_mean_nll_hand_checked():
    # Two tokens; the model gives the right one probability 1/2, then 1/4.
    # Mean NLL = (ln 2 + ln 4) / 2 = 1.5 ln 2, so perplexity = 2 ** 1.5 = 2.828...
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]])
    targets = torch.tensor([[0, 2]])
    nll = token_nll(probs.log(), targets)
    torch.testing.assert_close(nll, torch.tensor([[math.log(2), math.log(4)]]))
    assert perplexity(nll.mean().item()) == pytest.approx(2 ** 1.5, rel=1e-6)


def test_a_model_that_knows_nothing_has_perplexity_equal_to_the_vocabulary():
    model = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.wte.weight.zero_()  # tied output weights: all logits 0, a uniform prediction
    data = torch.randint(0, 37, (200,))
    assert window_perplexity(model, data, 16) == pytest.approx(37, rel=1e-5)


def test_sampling_respects_top_k():
    from tabs.tinygpt.model import sample_next

    logits = torch.tensor([[5.0, 4.0, 3.0, -1.0, -2.0]])
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 2.0, 2, g).item() for _ in range(200)}
    assert picks == {0, 1}
    assert sample_next(logits, 0.0, None).item() == 0  # temperature 0 is greedy


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_fixed_shape_decode_step_gives_the_uncached_tokens(pos):
    # The step the GPU captures as a CUDA graph (fixed shapes: the whole cache, a length mask),
    # run eagerly on CPU; twice on one decoder, so stale cache slots must stay hidden.
    from tabs.tinygpt.fastdecode import graph_generate

    model = tiny_model(pos)
    g = torch.Generator().manual_seed(6)
    for n_prompt, n_new in ((9, 25), (4, 12)):
        prompt = torch.randint(0, 61, (2, n_prompt), generator=g)
        fixed = graph_generate(model, prompt, n_new, 0.0, None, None)
        assert torch.equal(fixed, generate(model, prompt, n_new, temperature=0, use_cache=False))
    assert model._graph_decoder.max_len == 128  # one decoder, reused by the second call


def test_warm_tier_restore_drops_a_captured_graph_decoder():
    """A CUDA graph holds the old weight addresses: after a warm-tier restore it must be
    captured again, never replayed."""
    from tabs.tinygpt.model import GPT, GPTConfig
    from tabs.tinygpt.service import _warm_tier

    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    model._graph_decoder = object()
    tier = _warm_tier()
    restored = tier["restore"](tier["offload"](model), "cpu")
    assert restored is model and model._graph_decoder is None
