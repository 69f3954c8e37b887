"""Tiny chat models built from configs, for tests and benchmarks (no hub, no downloads).

- `build_tokenizer(family)`: a byte-level BPE tokenizer with the real Llama-3.1 or Qwen2.5 chat
  template and special tokens, trained in milliseconds on a small corpus.
- `tiny_model(family, tokenizer)`: a random Llama or Qwen2 model of the real architecture.
- `tokenizer_for_examples(family, examples)`: the same, with merges fitted to the examples.
- `teach(model, tokenizer, examples)`: overfit a tiny model on a few (prompt, reply) pairs so it
  really emits, through the real template and decode path, e.g. a tool call and then an answer.
- `save_chat_model(...)`: write model + tokenizer to a local folder the engine loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from studio.llm.templates import (
    LLAMA31_SPECIAL_TOKENS,
    LLAMA31_TEMPLATE,
    QWEN25_SPECIAL_TOKENS,
    QWEN25_TEMPLATE,
    QWEN25_TOOL_TOKENS,
)

FAMILIES = ("llama3.1", "qwen2.5")

_CORPUS = [
    "You are a helpful assistant. What is the weather in Paris? It is sunny and 21 C.",
    "The quick brown fox jumps over the lazy dog. Hello world, how are you today?",
    "get_weather city unit celsius fahrenheit string object function parameters arguments",
    "Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024 Environment: ipython",
    "You may call one or more functions to assist with the user query. tools tool_call",
    '{"name": "get_weather", "parameters": {"city": "Paris"}} {"type": "function"}',
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'\"()[]{}<>/\\-_",
]


def build_tokenizer(family: str, extra_text: Sequence[str] = (), vocab_size: int = 512):
    """A fast tokenizer with `family`'s real chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    specials = LLAMA31_SPECIAL_TOKENS if family == "llama3.1" else QWEN25_SPECIAL_TOKENS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(_CORPUS) + list(extra_text), trainer=trainer)
    if family == "llama3.1":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                       eos_token="<|eot_id|>", pad_token="<|eot_id|>")
        fast.chat_template = LLAMA31_TEMPLATE
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                       pad_token="<|endoftext|>")
        fast.add_tokens(QWEN25_TOOL_TOKENS)
        fast.chat_template = QWEN25_TEMPLATE
    return fast


def tokenizer_for_examples(family: str, examples, vocab_size: int = 1500):
    """A tokenizer whose merges fit the rendered `examples`, so they are short sequences and a
    tiny model learns them in seconds. `examples` as for `teach`."""
    first = build_tokenizer(family)
    texts = [first.apply_chat_template(m, tools=t, tokenize=False, add_generation_prompt=True)
             + reply for m, t, reply in examples]
    return build_tokenizer(family, extra_text=texts, vocab_size=vocab_size)


def tiny_model(family: str, tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, max_positions: int = 2048, seed: int = 0):
    """A random model of the family's architecture (Qwen2 has q/k/v biases, Llama has none)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                  tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if family == "llama3.1":
        cfg = LlamaConfig(**common, bos_token_id=tokenizer.bos_token_id,
                          rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                           "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 256})
        model = LlamaForCausalLM(cfg)
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    return model.eval()


def teach(model, tokenizer, examples: Sequence[tuple[list[dict], list[dict] | None, str]],
          steps: int = 400, lr: float = 1e-2, target_loss: float = 0.005) -> float:
    """Overfit `model` so that each rendered prompt is followed by its reply (+ end token).

    `examples` are (messages, tool schemas or None, reply text). Returns the final loss.
    """
    import torch

    seqs = []
    for messages, tools, reply in examples:
        prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                               add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + \
            [tokenizer.eos_token_id]
        ids = torch.tensor([p_ids + r_ids])
        labels = torch.tensor([[-100] * len(p_ids) + r_ids])
        seqs.append((ids, labels))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("inf"))
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(model(input_ids=i, labels=lab).loss for i, lab in seqs) / len(seqs)
        loss.backward()
        opt.step()
        if loss.item() < target_loss:
            break
    model.eval()
    return float(loss.item())


def save_chat_model(model, tokenizer, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_lora_adapter(model, folder: str | Path, seed: int = 1) -> Path:
    """Save a LoRA adapter with random (non-zero) weights for `model`, which is left unchanged."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    peft_model.save_pretrained(str(folder))
    return Path(folder)
