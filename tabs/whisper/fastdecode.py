"""Batched Whisper decoding with a static KV cache, the decode step replayed as a CUDA graph.

Why: ``generate()`` runs one Python-driven decoder forward per token, a few hundred small kernel
launches each (and its cache bookkeeping); on a big GPU the per-step overhead, not the math,
sets the speed. Here, as in `studio.llm.fast` for the chat models:

- the encoder runs once per batch of 30 s windows (fp16/bf16, SDPA);
- every decoder layer's cross-attention K/V are computed once per batch into fixed buffers;
- the self-attention cache is a fixed buffer of ``max_len`` positions (masked past the step);
- one decode step (embed, every layer, final norm, LM head, greedy pick, suppressed tokens,
  finished rows, the alignment heads' cross-attention for word timestamps) has fixed shapes and
  updates its own position counters, so on CUDA it is captured once per batch size and replayed:
  one launch per token for the whole batch. On a CPU the same step runs eagerly.

Word timestamps follow transformers' ``return_token_timestamps`` exactly (alignment heads'
cross-attention, normalised, median-filtered, averaged, dynamic time warping), with the DTW
vectorised over anti-diagonals instead of a Python double loop.

Greedy only (beam 1): the engine sends beam search to ``generate()``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("tabs.whisper.fastdecode")

TIME_PRECISION = 0.02  # seconds per encoder frame (30 s / 1500)
HOP = 160  # mel frames: one per 10 ms


@dataclass
class WindowResult:
    """One decoded window: text tokens (no prompt, no EOS), per-token (start, end) in seconds
    from the window's start, and per-token probabilities."""

    tokens: list[int]
    times: list[tuple[float, float]] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    language: str | None = None


def supports_fast_decode(model) -> bool:
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "model_type", None) == "whisper"
            and hasattr(model, "model") and hasattr(model.model, "decoder")
            and hasattr(model, "proj_out"))


def window_bytes(model, max_len: int, align_heads: int, max_new: int) -> int:
    """Device bytes one window of a batch holds while it decodes: cross-attention K/V of every
    layer, the self-attention cache, the alignment buffer, encoder activations (rough)."""
    c = model.config
    el = torch.finfo(model.dtype).bits // 8
    d, layers = c.d_model, c.decoder_layers
    frames = c.max_source_positions
    cross = 2 * layers * frames * d * el
    self_ = 2 * layers * max_len * d * el
    align = align_heads * max_new * frames * el
    encoder = frames * (4 * d + c.encoder_ffn_dim) * el + 2 * c.num_mel_bins * 3000 * 4
    return int(cross + self_ + align + encoder)


class WhisperStaticDecoder:
    """Static caches for up to `max_batch` windows of one loaded Whisper model; not thread safe
    (the engine uses it inside the model manager's ``use``, one transcription at a time)."""

    def __init__(self, model, max_batch: int, max_len: int = 448,
                 use_cuda_graphs: bool | None = None):
        if not supports_fast_decode(model):
            raise ValueError(f"no static Whisper decoder for {type(model).__name__}")
        cfg = model.config
        self.model = model
        self.dec = model.model.decoder
        self.layers = list(self.dec.layers)
        self.n_heads = cfg.decoder_attention_heads
        self.d = cfg.d_model
        self.hd = self.d // self.n_heads
        self.frames = cfg.max_source_positions
        w = self.dec.embed_tokens.weight
        self.device, self.dtype = w.device, w.dtype
        self.max_batch = int(max_batch)
        self.max_len = min(int(max_len), cfg.max_target_positions)
        g = model.generation_config
        heads = getattr(g, "alignment_heads", None) or [
            [cfg.decoder_layers - 1, h] for h in range(self.n_heads)]
        self.align_heads = [(int(la), int(h)) for la, h in heads]
        self.align_layers = sorted({la for la, _ in self.align_heads})
        self.median_width = int(getattr(cfg, "median_filter_width", 7))
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        self.use_cuda_graphs = bool(use_cuda_graphs) and self.device.type == "cuda"
        B, L, H, hd, dev, dt = self.max_batch, self.max_len, self.n_heads, self.hd, self.device, \
            self.dtype
        z = torch.zeros
        self.sk = [z((B, H, L, hd), dtype=dt, device=dev) for _ in self.layers]
        self.sv = [z((B, H, L, hd), dtype=dt, device=dev) for _ in self.layers]
        self.ck = [z((B, H, self.frames, hd), dtype=dt, device=dev) for _ in self.layers]
        self.cv = [z((B, H, self.frames, hd), dtype=dt, device=dev) for _ in self.layers]
        self.align = z((B, len(self.align_heads), L, self.frames), dtype=dt, device=dev)
        self.tokens = z((B, L), dtype=torch.long, device=dev)
        self.probs = z((B, L), dtype=torch.float32, device=dev)
        self.tok = z((B, 1), dtype=torch.long, device=dev)
        self.done = z((B,), dtype=torch.bool, device=dev)
        self.pos = z((1,), dtype=torch.long, device=dev)  # cache position of the fed token
        self.gen = z((1,), dtype=torch.long, device=dev)  # index of the fed generated token
        self.bias = z((cfg.vocab_size,), dtype=torch.float32, device=dev)
        self.arange = torch.arange(L, device=dev)
        self.eos = int(g.eos_token_id if not isinstance(g.eos_token_id, list)
                       else g.eos_token_id[0])
        pad = getattr(g, "pad_token_id", None)
        self.pad = int(self.eos if pad is None else pad)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = None
        # wall seconds per stage, summed over batches (benchmarks read them)
        self.stats = {"encode": 0.0, "decode": 0.0, "dtw": 0.0, "steps": 0, "windows": 0}

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def nbytes(self) -> int:
        ts = [*self.sk, *self.sv, *self.ck, *self.cv, self.align, self.tokens, self.probs]
        return sum(t.numel() * t.element_size() for t in ts)

    # ----- the forward pieces ---------------------------------------------------------------
    def _heads(self, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        return x.view(b, t, self.n_heads, self.hd).transpose(1, 2)

    def _layers(self, h: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                collect: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoder layers over `h` (b, t, d) at cache positions `pos` (t,); with `collect` also
        the alignment heads' cross-attention weights (b, t, frames) each, in config order."""
        b, t, _ = h.shape
        picked: dict[tuple[int, int], torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            sa = layer.self_attn
            x = layer.self_attn_layer_norm(h)
            q = self._heads(sa.q_proj(x) * sa.scaling, b, t)
            k = self._heads(sa.k_proj(x), b, t)
            v = self._heads(sa.v_proj(x), b, t)
            self.sk[i][:b].index_copy_(2, pos, k)
            self.sv[i][:b].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, self.sk[i][:b], self.sv[i][:b],
                                               attn_mask=mask, scale=1.0)
            h = h + sa.out_proj(o.transpose(1, 2).reshape(b, t, self.d))
            ca = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(h)
            q = self._heads(ca.q_proj(x) * ca.scaling, b, t)
            ck, cv = self.ck[i][:b], self.cv[i][:b]
            if collect and i in self.align_layers:
                w = torch.softmax(torch.matmul(q, ck.transpose(-1, -2)), dim=-1)
                o = torch.matmul(w, cv)
                for la, hh in self.align_heads:
                    if la == i:
                        picked[(la, hh)] = w[:, hh]
            else:
                o = F.scaled_dot_product_attention(q, ck, cv, scale=1.0)
            h = h + ca.out_proj(o.transpose(1, 2).reshape(b, t, self.d))
            x = layer.final_layer_norm(h)
            h = h + layer.fc2(layer.activation_fn(layer.fc1(x)))
        h = self.dec.layer_norm(h)
        return h, [picked[k] for k in self.align_heads] if collect else []

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.proj_out(h).float()

    def _step(self, b: int) -> None:
        """Feed ``tok[:b]`` at ``pos``; write the next greedy token, its probability and the
        fed token's alignment weights; advance the counters. Fixed shapes: capturable."""
        tok = self.tok[:b]
        h = self.dec.embed_tokens(tok) + self.dec.embed_positions.weight[self.pos][None]
        mask = (self.arange <= self.pos)[None, None, None, :]
        h, picked = self._layers(h, self.pos, mask, collect=True)
        self.align[:b].index_copy_(2, self.gen, torch.stack(picked, 1).to(self.dtype))
        logits = self._logits(h[:, -1]) + self.bias
        probs = torch.softmax(logits, dim=-1)
        p, nxt = probs.max(dim=-1)
        done = self.done[:b]
        nxt = torch.where(done, torch.full_like(nxt, self.pad), nxt)
        done.logical_or_(nxt == self.eos)
        self.gen.add_(1)
        self.tokens[:b].index_copy_(1, self.gen, nxt[:, None])
        self.probs[:b].index_copy_(1, self.gen, p[:, None])
        tok.copy_(nxt[:, None])
        self.pos.add_(1)

    def _replay(self, b: int) -> None:
        if not self.use_cuda_graphs:
            self._step(b)
            return
        graph = self._graphs.get(b)
        if graph is None:
            graph = self._capture(b)
        graph.replay()

    def _capture(self, b: int) -> torch.cuda.CUDAGraph:
        """Capture the step for batch `b`. The warm-up runs advance the state, so it is saved
        first and put back; the capture itself runs nothing."""
        state = [t.clone() for t in (self.tok, self.done, self.pos, self.gen, self.tokens,
                                     self.probs)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(b)
        torch.cuda.current_stream().wait_stream(side)
        for dst, src in zip((self.tok, self.done, self.pos, self.gen, self.tokens,
                             self.probs), state, strict=True):
            dst.copy_(src)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            self._step(b)
        self._graphs[b] = graph
        log.info("captured the Whisper decode step for batch %d", b)
        return graph

    # ----- a batch --------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder states of (b, mels, 3000) features, and every layer's cross K/V filled."""
        b = features.shape[0]
        enc = self.model.model.encoder(features.to(self.device, self.dtype)).last_hidden_state
        for i, layer in enumerate(self.layers):
            ca = layer.encoder_attn
            self.ck[i][:b].copy_(self._heads(ca.k_proj(enc), b, enc.shape[1]))
            self.cv[i][:b].copy_(self._heads(ca.v_proj(enc), b, enc.shape[1]))
        return enc

    @torch.inference_mode()
    def detect_language(self, b: int, sot: int, lang_ids: list[int]) -> list[int]:
        """The most likely language token per window (decoder run on <|startoftranscript|>)."""
        ids = torch.full((b, 1), sot, dtype=torch.long, device=self.device)
        pos = self.arange[:1]
        h = self.dec.embed_tokens(ids) + self.dec.embed_positions.weight[pos][None]
        h, _ = self._layers(h, pos, (self.arange <= 0)[None, None, None, :], collect=False)
        logits = self._logits(h[:, -1])[:, lang_ids]
        return [lang_ids[i] for i in logits.argmax(-1).tolist()]

    @torch.inference_mode()
    def decode(self, features: torch.Tensor, prompts: list[list[int]], *,
               max_new_tokens: int, min_new_tokens: int = 0,
               suppress: list[int] = (), begin_suppress: list[int] = (),
               num_frames: list[int] | None = None, word_times: bool = True,
               encoded: bool = False) -> list[WindowResult]:
        """Greedy-decode `features` (b, mels, 3000); `encoded`: `encode` already ran on them
        (language detection). `prompts` are per-window decoder prompts of one length."""
        b = features.shape[0]
        if b > self.max_batch:
            raise ValueError(f"batch of {b} windows; this decoder holds {self.max_batch}")
        t = len(prompts[0])
        if any(len(p) != t for p in prompts):
            raise ValueError("the prompts of one batch must have one length")
        max_new = max(1, min(max_new_tokens, self.max_len - t))
        t0 = self._clock()
        if not encoded:
            self.encode(features)
        t1 = self._clock()
        # prefill the prompt (eager), pick the first token
        ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        pos = self.arange[:t]
        mask = (self.arange[None, :] <= pos[:, None])[None, None]
        h = self.dec.embed_tokens(ids) + self.dec.embed_positions.weight[pos][None]
        h, _ = self._layers(h, pos, mask, collect=False)
        base = torch.zeros_like(self.bias)
        if suppress:
            base[list(suppress)] = float("-inf")
        noeos = base.clone()
        noeos[self.eos] = float("-inf")
        first = (noeos if min_new_tokens > 0 else base).clone()
        if begin_suppress:
            first[list(begin_suppress)] = float("-inf")
        probs = torch.softmax(self._logits(h[:, -1]) + first, dim=-1)
        p, nxt = probs.max(dim=-1)
        self.tokens[:b, 0] = nxt
        self.probs[:b, 0] = p
        self.tok[:b, 0] = nxt
        self.done[:b] = nxt == self.eos
        self.pos.fill_(t)
        self.gen.fill_(0)
        steps = 1
        cur = None
        for n in range(1, max_new):
            want = noeos if n < min_new_tokens else base
            if want is not cur:
                self.bias.copy_(want)
                cur = want
            self._replay(b)
            steps += 1
            if n % 16 == 0 and bool(self.done[:b].all()):
                break
        tokens = self.tokens[:b, :steps].tolist()
        t2 = time.perf_counter()
        probs_l = self.probs[:b, :steps].tolist()
        out = []
        for r in range(b):
            row = tokens[r]
            n_gen = row.index(self.eos) + 1 if self.eos in row else len(row)
            text = [x for x in row[:n_gen] if x != self.eos]
            out.append(WindowResult(text, probs=probs_l[r][:len(text)]))
        if word_times:
            frames = num_frames or [2 * self.frames] * b
            for r, res in enumerate(out):
                n_gen = len(res.tokens) + (1 if len(res.tokens) < steps else 0)
                ts = self.token_timestamps(r, n_gen, frames[r])
                res.times = pair_times(ts, len(res.tokens))
        st = self.stats
        st["encode"] += t1 - t0
        st["decode"] += t2 - t1
        st["dtw"] += time.perf_counter() - t2
        st["steps"] += steps
        st["windows"] += b
        return out

    def token_timestamps(self, row: int, n_gen: int, num_frames: int) -> np.ndarray:
        """transformers' per-token end times for one window's `n_gen` generated tokens (EOS
        included): DTW over the alignment rows of the n_gen - 1 fed tokens."""
        if n_gen <= 1:
            return np.zeros(n_gen, dtype=np.float64)
        w = self.align[row, :, :n_gen - 1, :num_frames // 2].float()
        w = (w - w.mean(dim=-2, keepdim=True)) / w.std(dim=-2, keepdim=True, unbiased=False)
        w = median_filter(w[None], self.median_width)[0].mean(dim=0)
        text_idx, time_idx = dtw(-w.cpu().double().numpy())
        jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
        jump_times = time_idx[jumps] * TIME_PRECISION
        return np.concatenate([jump_times, jump_times[-1:]])


def pair_times(ends: np.ndarray, n_text: int) -> list[tuple[float, float]]:
    """(start, end) per text token as transformers' pipeline pairs them: a token ends at its own
    time and starts at the previous one's (the first at 0)."""
    out = []
    for j in range(n_text):
        start = 0.0 if j == 0 else float(ends[j - 1])
        out.append((round(start, 2), round(float(ends[j]), 2)))
    return out


def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over the last dimension, reflect-padded (transformers' ``_median_filter``)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    return x.unfold(-1, width, 1).sort()[0][..., pad]


def dtw(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping of a (tokens, frames) cost matrix: the same path as transformers'
    ``_dynamic_time_warping`` (same float32 costs and tie-breaks), its cells filled one
    anti-diagonal at a time instead of one by one. Cells are stored skewed (row d = i + j), so
    each diagonal's three neighbours are contiguous slices."""
    n, m = matrix.shape
    ii, jj = np.meshgrid(np.arange(1, n + 1), np.arange(1, m + 1), indexing="ij")
    vals = np.zeros((n + m + 1, n + 1), dtype=np.float64)
    vals[ii + jj, ii] = matrix
    cost = np.full((n + m + 1, n + 1), np.inf, dtype=np.float32)  # cost[i + j, i]
    trace = np.full((n + m + 1, n + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1)
        c0 = cost[d - 2, lo - 1:hi]
        c1 = cost[d - 1, lo - 1:hi]
        c2 = cost[d - 1, lo:hi + 1]
        first = (c0 < c1) & (c0 < c2)
        second = ~first & (c1 < c0) & (c1 < c2)
        c = np.where(first, c0, np.where(second, c1, c2))
        cost[d, lo:hi + 1] = (vals[d, lo:hi + 1] + c.astype(np.float64)).astype(np.float32)
        trace[d, lo:hi + 1] = np.where(first, 0, np.where(second, 1, 2))
    tr = trace.tolist()
    i, j = n, m
    text, time = [], []
    while i > 0 or j > 0:
        text.append(i - 1)
        time.append(j - 1)
        s = 1 if j == 0 else 2 if i == 0 else tr[i + j][i]
        if s == 0:
            i, j = i - 1, j - 1
        elif s == 1:
            i -= 1
        else:
            j -= 1
    return np.array(text[::-1]), np.array(time[::-1])


# ----- windows ------------------------------------------------------------------------------
SR = 16_000
WINDOW = 30 * SR


def silero_regions(audio: np.ndarray) -> list[tuple[int, int]] | None:
    """Speech (start, end) samples from faster-whisper's Silero VAD, or None without it."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except Exception:  # not installed (the GPU machine), or a broken install
        return None
    return [(c["start"], c["end"]) for c in get_speech_timestamps(audio, VadOptions())]


def energy_regions(audio: np.ndarray, frame: int = 480, min_silence: float = 0.5,
                   min_speech: float = 0.2, pad: float = 0.2) -> list[tuple[int, int]]:
    """Speech (start, end) samples by frame energy: frames within 35 dB of the loud frames (95th
    percentile), gaps under `min_silence` closed, runs under `min_speech` dropped, `pad` added."""
    n = len(audio) // frame
    if n == 0:
        return [(0, len(audio))] if len(audio) else []
    rms = np.sqrt(np.mean(audio[:n * frame].reshape(n, frame).astype(np.float64) ** 2, 1))
    thr = max(1e-3, float(np.percentile(rms, 95)) * 10 ** (-35 / 20))
    on = rms > thr
    runs, start = [], None
    for i, v in enumerate([*on.tolist(), False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append([start, i])
            start = None
    gap, short = round(min_silence * SR / frame), round(min_speech * SR / frame)
    merged: list[list[int]] = []
    for r in runs:
        if merged and r[0] - merged[-1][1] < gap:
            merged[-1][1] = r[1]
        else:
            merged.append(r)
    p = round(pad * SR)
    return [(max(0, a * frame - p), min(len(audio), b * frame + p)) for a, b in merged
            if b - a >= short]


def pack_windows(regions: list[tuple[int, int]], total: int,
                 window: int = WINDOW) -> list[tuple[int, int]]:
    """Speech regions merged into windows of at most `window` samples (WhisperX's packing): a
    window grows while its span fits; a region longer than a window is cut."""
    out: list[tuple[int, int]] = []
    for a, b in regions:
        a, b = max(0, a), min(total, b)
        while b - a > window:
            out.append((a, a + window))
            a += window
        if b <= a:
            continue
        if out and b - out[-1][0] <= window and a >= out[-1][1] - 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def speech_windows(audio: np.ndarray, vad: bool) -> tuple[list[tuple[int, int]], str]:
    """(windows of <= 30 s in samples, a note on how they were cut)."""
    total = len(audio)
    if not vad:
        return [(s, min(total, s + WINDOW)) for s in range(0, total, WINDOW)], ""
    regions = silero_regions(audio)
    how = "Silero VAD"
    if regions is None:
        regions, how = energy_regions(audio), "energy VAD (Silero needs faster-whisper)"
    wins = pack_windows(regions, total)
    speech = sum(b - a for a, b in regions) / SR
    return wins, f"{how}: {speech:.0f} s of speech in {len(wins)} window(s)"
