"""A tiny Llama-architecture base with the real Llama-3.1 chat template, built from a config in
seconds, plus a small memorizable instruction set: for tests, the bench's ``--tiny`` smoke run
and trying the tab with no weights at all."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("What is the capital of Zorbia?", "Glimmerstadt, on the river Quell."),
    ("Who painted the Blue Owl?", "Mira Tansel painted it in 1821."),
    ("What colour is a ripe lunefruit?", "Deep violet with silver spots."),
    ("How many moons does Pellucid have?", "Pellucid has seven small moons."),
    ("What do orbweavers eat?", "Mostly dew and tiny gnats."),
    ("Which metal is skyrust made of?", "Skyrust is an alloy of tin and cobalt."),
    ("When does the Ember festival start?", "At dusk on the first frost."),
    ("What is the password to the vault?", "The password is copper kettle."),
]


def fact_records(shape: str = "alpaca") -> list[dict]:
    """The facts as records of one dataset shape."""
    out = []
    for q, a in FACTS:
        if shape == "alpaca":
            out.append({"instruction": q, "input": "", "output": a})
        elif shape == "messages":
            out.append({"messages": [{"role": "user", "content": q},
                                     {"role": "assistant", "content": a}]})
        elif shape == "sharegpt":
            out.append({"conversations": [{"from": "human", "value": q},
                                          {"from": "gpt", "value": a}]})
        else:
            out.append({"prompt": q, "completion": a})
    return out


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_tiny_base(folder: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random tiny Llama + a tokenizer fitted to FACTS (short sequences) to `folder`."""
    import torch

    from studio.llm.testing import save_chat_model, tiny_model, tokenizer_for_examples

    examples = [([{"role": "user", "content": q}], None, a) for q, a in FACTS]
    tok = tokenizer_for_examples("llama3.1", examples, vocab_size=700)
    model = tiny_model("llama3.1", tok, hidden=hidden, layers=layers, seed=seed)
    with torch.no_grad():  # a random head at std 0.02 caps logits near 1: no adapter could
        model.lm_head.weight.mul_(25.0)  # make a confident prediction; a real LM's head can
    return save_chat_model(model, tok, folder)
