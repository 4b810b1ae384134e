"""Prompts of exact length, unique per request.

Identical prompts let vLLM's prefix cache skip prefill and inflate throughput (the seed teams' mistake),
so every request gets its own prompt: completions prompts are lists of random token ids whose first
tokens spell the request's index (no two prompts share even the first KV block); chat prompts are real
text messages, distinct per request, sized with the model's own chat template. Each run of a point
draws new prompts (point_seed).
"""

from __future__ import annotations

import hashlib
import os
import random
from functools import lru_cache
from typing import Any, Sequence

# Sentences the chat prompts are built from: chat models need a real question, not random tokens.
_CHAT_TEXT = (
    "Explain how a transformer model decides which earlier words matter for the next word.",
    "Summarise the history of weather forecasting in a few clear paragraphs.",
    "What are the trade-offs between renting and buying a house in a large city?",
    "Describe a simple recipe for bread and explain why the dough must rest.",
    "How do supercomputers cool thousands of processors without wasting energy?",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Compare the economic effects of railways and highways on small towns.",
    "Why does the sky look blue during the day and red at sunset?",
    "List the steps to plan a two week hiking trip in the mountains.",
    "What should a new programmer learn first, and in which order?",
    "Explain the difference between weather and climate to a curious child.",
    "How do vaccines train the immune system to recognise a virus?",
)


def seed_for(*parts: object) -> int:
    """A stable seed from any labels (point id, kind): same inputs, same prompts, on any machine."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def point_seed(experiment: str, started: str, sweep: str, point_id: str, kind: str) -> int:
    """The seed of one run of a point's prompts (kind: measured or warmup). The run is part of it (the
    experiment, the scheduler job and the point's start time, all in the point's row), so a point
    repeated, resumed or run again against a long-lived server never resends prompts the server has
    already cached; the row still says how to rebuild them."""
    return seed_for(experiment, os.environ.get("HPCBENCH_JOB_ID", ""), started, sweep, point_id, kind)


@lru_cache(maxsize=8)
def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def usable_token_ids(model_path: str, vocab_hint: int | None = None) -> list[int]:
    """Token ids a prompt may use: the tokenizer's vocabulary without special tokens.

    Falls back to range(vocab_hint) when the tokenizer cannot be loaded (prompts are token ids,
    so the server never re-tokenizes them)."""
    try:
        tok = load_tokenizer(model_path)
    except Exception:
        if not vocab_hint:
            raise
        return list(range(vocab_hint))
    size = len(tok) if vocab_hint is None else min(len(tok), vocab_hint)
    special = set(tok.all_special_ids)
    return [i for i in range(size) if i not in special]


def token_prompts(n: int, input_len: int, ids: Sequence[int], seed: int) -> list[list[int]]:
    """n prompts of exactly input_len token ids; the first tokens are the request index in base len(ids)."""
    if input_len < 1:
        raise ValueError("input_len must be >= 1")
    base = len(ids)
    if base < 2:
        raise ValueError("need at least two usable token ids")
    rng = random.Random(seed)
    # Base-`base` digits of the index: ceil(log_base(n)) tokens make every prompt's head distinct.
    digits = 1
    while base ** digits < n:
        digits += 1
    head = min(digits, input_len)
    offset = rng.randrange(base)  # varies the heads between points too
    out = []
    for i in range(n):
        prefix, k = [], i
        for _ in range(head):
            prefix.append(ids[(k + offset) % base])
            k //= base
        out.append(prefix + rng.choices(ids, k=input_len - head))
    return out


def chat_length(tok: Any, messages: list[dict[str, str]]) -> int:
    """Prompt tokens the server will count: the chat template with the generation prompt, tokenized."""
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding (dict) by default, 4.x a list of ids.
    return len(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def chat_prompts(n: int, input_len: int, tok: Any, seed: int) -> list[list[dict[str, str]]]:
    """n single-turn chats whose templated length is exactly input_len tokens, distinct per request."""
    rng = random.Random(seed)
    empty = chat_length(tok, [{"role": "user", "content": ""}])
    if empty >= input_len:
        raise ValueError(f"the chat template alone takes {empty} tokens; input_len {input_len} is too short")
    out = []
    for i in range(n):
        sentences = list(_CHAT_TEXT)
        rng.shuffle(sentences)
        text = f"Request {i}. " + " ".join(sentences)
        body = tok.encode(text, add_special_tokens=False)
        while len(body) < 2 * input_len:  # enough text to cut from
            body += tok.encode(" " + " ".join(sentences), add_special_tokens=False)
        out.append([{"role": "user", "content": _fit(tok, body, input_len)}])
    return out


def _fit(tok: Any, body: list[int], target: int) -> str:
    """Text cut from body whose templated length is exactly target (decode/re-encode is not exact,
    so adjust the cut, then pad with single characters if no cut lands on the target)."""
    def length(text: str) -> int:
        return chat_length(tok, [{"role": "user", "content": text}])

    k = target - length("")
    seen: set[int] = set()
    for _ in range(64):
        text = tok.decode(body[:k])
        got = length(text)
        if got == target:
            return text
        if k in seen:
            break
        seen.add(k)
        k += 1 if got < target else -1
    # No cut fits exactly: shrink below the target, then grow one character at a time.
    text = tok.decode(body[:k])
    while length(text) > target:
        text = text[:-1]
    for pad in (" x", "x", " a", "a", " ", "."):
        while length(text + pad) <= target:
            text += pad
            if length(text) == target:
                return text
    raise ValueError(f"cannot build a chat prompt of exactly {target} tokens with this tokenizer")

