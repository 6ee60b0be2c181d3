"""BERT inputs made from token ids with numpy: MLM masking and [CLS] a [SEP] b [SEP] encoding.

Used by the Grain pipelines (`pipeline.py` for text, `classification.py` for labelled tasks).
Random draws use numpy's PCG64 via SeedSequence (`seeded_rng`): reproducible for a numpy version.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cottention_jax.data.tokenization import Tokenizer

__all__ = ["encode_classification_inputs", "mask_tokens", "require_roles", "seeded_rng"]


def seeded_rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def _check_positive(name: str, value: int, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def require_roles(tokenizer: Tokenizer, roles: Sequence[str], purpose: str) -> None:
    absent = [r for r in roles if tokenizer.special_ids.get(r) is None]
    if absent:
        raise ValueError(
            f"tokenizer: {purpose} needs special tokens {list(roles)}; the {tokenizer.kind} tokenizer has no {absent}"
        )


# ---------------------------------------------------------------- BERT MLM


def mask_tokens(
    input_ids: np.ndarray,
    padding_mask: np.ndarray,
    tokenizer: Tokenizer,
    rng: np.random.Generator,
    mask_rate: float = 0.15,
):
    """BERT masking: choose round(mask_rate * n) of the n real non-special tokens of each row
    (at least one when n > 0); of those 80% -> [MASK], 10% -> a random non-special
    token, 10% unchanged.

    input_ids (B, T) int32, padding_mask (B, T) bool (True = real token).
    Returns (masked_ids (B, T) int32, mlm_labels (B, T) int32 = original id where
    chosen else 0, mlm_weights (B, T) float32 = 1 where chosen else 0).
    """
    require_roles(tokenizer, ["mask"], "MLM masking")
    if not 0.0 < mask_rate < 1.0:
        raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}")
    if input_ids.shape != padding_mask.shape or input_ids.ndim != 2:
        raise ValueError(
            f"input_ids and padding_mask must both be (B, T), got {input_ids.shape} and {padding_mask.shape}"
        )
    specials = np.asarray(tokenizer.all_special_ids)
    eligible = padding_mask & ~np.isin(input_ids, specials)
    n_eligible = eligible.sum(axis=1)
    n_chosen = np.where(n_eligible > 0, np.maximum(1, np.rint(mask_rate * n_eligible)), 0)
    # Rank eligible positions by a random score; the lowest n_chosen ranks are chosen.
    scores = np.where(eligible, rng.random(input_ids.shape), np.inf)
    ranks = np.argsort(np.argsort(scores, axis=1, kind="stable"), axis=1, kind="stable")
    chosen = eligible & (ranks < n_chosen[:, None])
    action = rng.random(input_ids.shape)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    candidates = np.setdiff1d(np.arange(tokenizer.vocab_size), specials)
    random_ids = candidates[rng.integers(0, len(candidates), input_ids.shape)]
    masked = np.where(to_mask, tokenizer.mask_id, np.where(to_random, random_ids, input_ids))
    labels = np.where(chosen, input_ids, 0)
    return masked.astype(np.int32), labels.astype(np.int32), chosen.astype(np.float32)


# ---------------------------------------------------------------- classification


def encode_classification_inputs(
    ids_a: Sequence[np.ndarray], ids_b: Sequence[np.ndarray] | None, tokenizer: Tokenizer, seq_len: int
):
    """BERT inputs for N examples: [CLS] a [SEP] (single) or [CLS] a [SEP] b [SEP] (pair).

    Over-long inputs are cut from the end of the longer text first. Returns
    input_ids (N, T) int32, segment_ids (N, T) int32 (1 on b and its [SEP]),
    padding_mask (N, T) bool. ids_b None or all empty means single sentences.
    """
    require_roles(tokenizer, ["pad", "cls", "sep"], "classification inputs")
    seqs_b: Sequence[np.ndarray] = () if ids_b is None else ids_b
    pair = any(len(b) for b in seqs_b)
    seq_len = _check_positive("seq_len", seq_len, 4 if pair else 3)
    if pair and len(seqs_b) != len(ids_a):
        raise ValueError(f"ids_a and ids_b must have the same length, got {len(ids_a)} and {len(seqs_b)}")
    n = len(ids_a)
    input_ids = np.full((n, seq_len), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros((n, seq_len), np.int32)
    padding_mask = np.zeros((n, seq_len), bool)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for i in range(n):
        a = np.asarray(ids_a[i], np.int32)
        b = np.asarray(seqs_b[i], np.int32) if pair else np.zeros(0, np.int32)
        budget = seq_len - (3 if pair else 2)
        la, lb = len(a), len(b)
        while la + lb > budget:  # longest-first truncation
            if la > lb:
                la -= 1
            else:
                lb -= 1
        row = [cls, *a[:la], sep] + ([*b[:lb], sep] if pair else [])
        input_ids[i, : len(row)] = row
        padding_mask[i, : len(row)] = True
        if pair:
            segment_ids[i, la + 2 : len(row)] = 1
    return input_ids, segment_ids, padding_mask
