"""Batch iterators over numpy int32 arrays: deterministic, seedable, resumable.

Training iterators (`GPTBatches`, `MLMBatches`, `ClassificationBatches`) are
infinite and indexed by step: batch k is a pure function of (seed, k) and the
data. Items are drawn in epochs; epoch e visits every item once in the order of
a permutation seeded by (seed, e), and epochs follow one another without a gap
(a batch may straddle two epochs). `get_state()` returns a small JSON-serialisable
dict; `set_state(state)` on an iterator built from the same data and settings
makes the next batch exactly the one that would have followed. Random draws use
numpy's PCG64 via SeedSequence: reproducible for a given numpy version.

Evaluation functions (`gpt_eval_batches`, `mlm_eval_batches`,
`classification_eval_batches`) are finite and ordered; every batch has the full
batch size, and a "weights" entry is 0 on rows or tokens added as padding.

Batches (B = batch_size, T = seq_len):

    GPT:            inputs (B, T) int32, targets (B, T) int32, weights (B, T) float32
    MLM:            input_ids, segment_ids (B, T) int32, padding_mask (B, T) bool,
                    mlm_labels (B, T) int32, mlm_weights (B, T) float32
    classification: input_ids, segment_ids (B, T) int32, padding_mask (B, T) bool,
                    labels (B,) int32, weights (B,) float32
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from cottention_jax.data.tokenization import Tokenizer

__all__ = [
    "ClassificationBatches",
    "GPTBatches",
    "MLMBatches",
    "classification_eval_batches",
    "encode_classification_inputs",
    "gpt_eval_batches",
    "mask_tokens",
    "mlm_eval_batches",
    "pack_documents",
]

# Separate random streams for item order and for MLM masking.
_ORDER_STREAM, _MASK_STREAM, _EVAL_MASK_STREAM = 0, 1, 2


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def _check_positive(name: str, value: int, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _require(tokenizer: Tokenizer, roles: Sequence[str], purpose: str) -> None:
    absent = [r for r in roles if tokenizer.special_ids.get(r) is None]
    if absent:
        raise ValueError(f"tokenizer: {purpose} needs special tokens {list(roles)}; the "
                         f"{tokenizer.kind} tokenizer has no {absent}")


class _StepIndexedBatches:
    """Infinite batches of items drawn in seeded epochs; state is the step counter."""

    kind = ""

    def __init__(self, num_items: int, batch_size: int, seed: int):
        self.batch_size = _check_positive("batch_size", batch_size)
        self.seed = int(seed)
        self.num_items = int(num_items)
        self._step = 0
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = _rng(self.seed, _ORDER_STREAM, epoch).permutation(self.num_items)
        return self._perms[epoch]

    def item_indices(self, step: int) -> np.ndarray:
        """(B,) int64: the items of batch `step` (positions step*B ... step*B+B-1 of the stream)."""
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, self.num_items)
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            out[chosen] = self._permutation(int(epoch))[offsets[chosen]]
        return out

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """Batch number `step` (0-based) without moving the iterator."""
        _check_positive("step", step, 0)
        return self._make_batch(step, self.item_indices(step))

    def _make_batch(self, step: int, items: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def step(self) -> int:
        """How many batches have been taken with next()."""
        return self._step

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self._step)
        self._step += 1
        return batch

    def _settings(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "batch_size": self.batch_size,
                "num_items": self.num_items}

    def get_state(self) -> dict:
        """JSON-serialisable position: {"step", plus the settings it is only valid for}."""
        return {"step": self._step, **self._settings()}

    def set_state(self, state: dict) -> None:
        """Resume at state["step"]; the other entries must match this iterator's settings."""
        if "step" not in state:
            raise ValueError(f"state must have a 'step' entry, got keys {sorted(state)}")
        for key, value in self._settings().items():
            if state.get(key) != value:
                raise ValueError(f"state[{key!r}] is {state.get(key)!r} but this iterator has "
                                 f"{key}={value!r}: the state belongs to other data or settings")
        self._step = _check_positive("state['step']", state["step"], 0)


# ---------------------------------------------------------------- GPT


def pack_documents(documents: Sequence[np.ndarray], eos_id: int) -> np.ndarray:
    """(N,) int32: the documents' tokens concatenated, each followed by eos_id."""
    if not len(documents):
        raise ValueError("documents must not be empty")
    pieces = []
    for doc in documents:
        pieces.append(np.asarray(doc, np.int32))
        pieces.append(np.asarray([eos_id], np.int32))
    return np.concatenate(pieces)


class GPTBatches(_StepIndexedBatches):
    """Packed causal-LM batches: windows of T+1 tokens of the document stream.

    The stream is `pack_documents(documents, tokenizer.eos_id)`; window i covers
    stream[i*T : i*T + T + 1] (inputs = its first T tokens, targets = its last T),
    so windows cross document boundaries at an EOS, as in GPT-2 training.
    """

    kind = "gpt"

    def __init__(self, documents: Sequence[np.ndarray], tokenizer: Tokenizer, batch_size: int,
                 seq_len: int, seed: int = 0):
        _require(tokenizer, ["eos"], "GPT batches")
        self.seq_len = _check_positive("seq_len", seq_len)
        self.stream = pack_documents(documents, tokenizer.eos_id)
        num_windows = (len(self.stream) - 1) // self.seq_len
        if num_windows < 1:
            raise ValueError(f"seq_len={seq_len} needs at least {seq_len + 1} tokens, "
                             f"the documents give {len(self.stream)}")
        super().__init__(num_windows, batch_size, seed)

    def _make_batch(self, step, items):
        windows = self.stream[items[:, None] * self.seq_len + np.arange(self.seq_len + 1)]
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
                "weights": np.ones((self.batch_size, self.seq_len), np.float32)}

    def _settings(self):
        return {**super()._settings(), "seq_len": self.seq_len, "num_tokens": int(len(self.stream))}


def gpt_eval_batches(documents: Sequence[np.ndarray], tokenizer: Tokenizer, batch_size: int,
                     seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    """Every target token of the packed stream exactly once, in order, in (B, T) batches.

    The last window and the last batch are filled with pad tokens whose weight is 0,
    so sum(loss * weights) / sum(weights) is the exact per-token loss.
    """
    _require(tokenizer, ["eos", "pad"], "GPT evaluation batches")
    batch_size = _check_positive("batch_size", batch_size)
    seq_len = _check_positive("seq_len", seq_len)
    stream = pack_documents(documents, tokenizer.eos_id)
    num_targets = len(stream) - 1
    num_windows = -(-num_targets // seq_len)
    num_batches = -(-num_windows // batch_size)
    padded = np.full(num_batches * batch_size * seq_len + 1, tokenizer.pad_id, np.int32)
    padded[:len(stream)] = stream
    real = np.zeros(num_batches * batch_size * seq_len, np.float32)
    real[:num_targets] = 1.0
    for b in range(num_batches):
        start = b * batch_size * seq_len
        span = padded[start:start + batch_size * seq_len + 1]
        inputs = span[:-1].reshape(batch_size, seq_len)
        targets = span[1:].reshape(batch_size, seq_len)
        weights = real[start:start + batch_size * seq_len].reshape(batch_size, seq_len)
        yield {"inputs": inputs, "targets": targets, "weights": weights}


# ---------------------------------------------------------------- BERT MLM


def mask_tokens(input_ids: np.ndarray, padding_mask: np.ndarray, tokenizer: Tokenizer,
                rng: np.random.Generator, mask_rate: float = 0.15):
    """BERT masking: choose round(mask_rate * n) of the n real non-special tokens of each row
    (at least one when n > 0); of those 80% -> [MASK], 10% -> a random non-special
    token, 10% unchanged.

    input_ids (B, T) int32, padding_mask (B, T) bool (True = real token).
    Returns (masked_ids (B, T) int32, mlm_labels (B, T) int32 = original id where
    chosen else 0, mlm_weights (B, T) float32 = 1 where chosen else 0).
    """
    _require(tokenizer, ["mask"], "MLM masking")
    if not 0.0 < mask_rate < 1.0:
        raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}")
    if input_ids.shape != padding_mask.shape or input_ids.ndim != 2:
        raise ValueError(f"input_ids and padding_mask must both be (B, T), got "
                         f"{input_ids.shape} and {padding_mask.shape}")
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


def _mlm_sequences(documents, tokenizer, seq_len):
    """(N, T) int32 rows [CLS] piece [SEP] pad..., one per piece of T-2 tokens of a document,
    and (N,) lengths; pieces never cross a document boundary."""
    body = seq_len - 2
    rows, lengths = [], []
    for doc in documents:
        doc = np.asarray(doc, np.int32)
        for start in range(0, len(doc), body):
            piece = doc[start:start + body]
            row = np.full(seq_len, tokenizer.pad_id, np.int32)
            row[0], row[1:len(piece) + 1], row[len(piece) + 1] = tokenizer.cls_id, piece, tokenizer.sep_id
            rows.append(row)
            lengths.append(len(piece) + 2)
    if not rows:
        raise ValueError("documents must hold at least one token")
    return np.stack(rows), np.asarray(lengths, np.int32)


def _mlm_batch(rows, lengths, tokenizer, rng, mask_rate):
    seq_len = rows.shape[1]
    padding_mask = np.arange(seq_len)[None, :] < lengths[:, None]
    masked, labels, weights = mask_tokens(rows, padding_mask, tokenizer, rng, mask_rate)
    return {"input_ids": masked, "segment_ids": np.zeros_like(rows), "padding_mask": padding_mask,
            "mlm_labels": labels, "mlm_weights": weights}


class MLMBatches(_StepIndexedBatches):
    """BERT masked-LM batches: rows [CLS] up to T-2 tokens of one document [SEP] [PAD]...

    Rows are fixed pieces of the documents; masks are drawn from (seed, step), so a
    resumed run sees exactly the masks it would have seen. segment_ids are all 0.
    """

    kind = "mlm"

    def __init__(self, documents: Sequence[np.ndarray], tokenizer: Tokenizer, batch_size: int,
                 seq_len: int, seed: int = 0, mask_rate: float = 0.15):
        _require(tokenizer, ["pad", "cls", "sep", "mask"], "MLM batches")
        self.seq_len = _check_positive("seq_len", seq_len, 3)
        self.tokenizer, self.mask_rate = tokenizer, float(mask_rate)
        self.rows, self.lengths = _mlm_sequences(documents, tokenizer, self.seq_len)
        super().__init__(len(self.rows), batch_size, seed)

    def _make_batch(self, step, items):
        rng = _rng(self.seed, _MASK_STREAM, step)
        return _mlm_batch(self.rows[items], self.lengths[items], self.tokenizer, rng, self.mask_rate)

    def _settings(self):
        return {**super()._settings(), "seq_len": self.seq_len, "mask_rate": self.mask_rate}


def mlm_eval_batches(documents: Sequence[np.ndarray], tokenizer: Tokenizer, batch_size: int,
                     seq_len: int, seed: int = 0, mask_rate: float = 0.15
                     ) -> Iterator[dict[str, np.ndarray]]:
    """Every row of `MLMBatches` once, in order, with masks fixed by (seed, batch number).

    The last batch is completed with all-padding rows (padding_mask False, weights 0).
    """
    _require(tokenizer, ["pad", "cls", "sep", "mask"], "MLM evaluation batches")
    batch_size = _check_positive("batch_size", batch_size)
    rows, lengths = _mlm_sequences(documents, tokenizer, _check_positive("seq_len", seq_len, 3))
    for b, start in enumerate(range(0, len(rows), batch_size)):
        chunk_rows, chunk_lengths = rows[start:start + batch_size], lengths[start:start + batch_size]
        fill = batch_size - len(chunk_rows)
        if fill:
            chunk_rows = np.concatenate([chunk_rows, np.full((fill, seq_len), tokenizer.pad_id, np.int32)])
            chunk_lengths = np.concatenate([chunk_lengths, np.zeros(fill, np.int32)])
        yield _mlm_batch(chunk_rows, chunk_lengths, tokenizer, _rng(seed, _EVAL_MASK_STREAM, b),
                         mask_rate)


# ---------------------------------------------------------------- classification


def encode_classification_inputs(ids_a: Sequence[np.ndarray], ids_b: Sequence[np.ndarray] | None,
                                 tokenizer: Tokenizer, seq_len: int):
    """BERT inputs for N examples: [CLS] a [SEP] (single) or [CLS] a [SEP] b [SEP] (pair).

    Over-long inputs are cut from the end of the longer text first. Returns
    input_ids (N, T) int32, segment_ids (N, T) int32 (1 on b and its [SEP]),
    padding_mask (N, T) bool. ids_b None or all empty means single sentences.
    """
    _require(tokenizer, ["pad", "cls", "sep"], "classification inputs")
    pair = ids_b is not None and any(len(b) for b in ids_b)
    seq_len = _check_positive("seq_len", seq_len, 4 if pair else 3)
    if pair and len(ids_b) != len(ids_a):
        raise ValueError(f"ids_a and ids_b must have the same length, got {len(ids_a)} and {len(ids_b)}")
    n = len(ids_a)
    input_ids = np.full((n, seq_len), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros((n, seq_len), np.int32)
    padding_mask = np.zeros((n, seq_len), bool)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for i in range(n):
        a = np.asarray(ids_a[i], np.int32)
        b = np.asarray(ids_b[i], np.int32) if pair else np.zeros(0, np.int32)
        budget = seq_len - (3 if pair else 2)
        la, lb = len(a), len(b)
        while la + lb > budget:  # longest-first truncation
            if la > lb:
                la -= 1
            else:
                lb -= 1
        row = [cls, *a[:la], sep] + ([*b[:lb], sep] if pair else [])
        input_ids[i, :len(row)] = row
        padding_mask[i, :len(row)] = True
        if pair:
            segment_ids[i, la + 2:len(row)] = 1
    return input_ids, segment_ids, padding_mask


class ClassificationBatches(_StepIndexedBatches):
    """Shuffled, infinite classification batches from token-id examples and their labels."""

    kind = "classification"

    def __init__(self, ids_a: Sequence[np.ndarray], ids_b: Sequence[np.ndarray] | None,
                 labels: np.ndarray, tokenizer: Tokenizer, batch_size: int, seq_len: int,
                 seed: int = 0):
        labels = np.asarray(labels)
        if labels.shape != (len(ids_a),) or len(ids_a) == 0:
            raise ValueError(f"labels must have shape ({len(ids_a)},) matching ids_a (non-empty), "
                             f"got {labels.shape}")
        self.seq_len = int(seq_len)
        self.inputs = encode_classification_inputs(ids_a, ids_b, tokenizer, seq_len)
        self.labels = labels.astype(np.int32)
        super().__init__(len(labels), batch_size, seed)

    @classmethod
    def from_split(cls, split, tokenizer: Tokenizer, batch_size: int, seq_len: int, seed: int = 0):
        """From a `builders.TaskSplit`."""
        return cls(split.ids_a, split.ids_b, split.labels, tokenizer, batch_size, seq_len, seed)

    def _make_batch(self, step, items):
        input_ids, segment_ids, padding_mask = (x[items] for x in self.inputs)
        return {"input_ids": input_ids, "segment_ids": segment_ids, "padding_mask": padding_mask,
                "labels": self.labels[items], "weights": np.ones(self.batch_size, np.float32)}

    def _settings(self):
        return {**super()._settings(), "seq_len": self.seq_len}


def classification_eval_batches(ids_a: Sequence[np.ndarray], ids_b: Sequence[np.ndarray] | None,
                                labels: np.ndarray, tokenizer: Tokenizer, batch_size: int,
                                seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order; the last batch is completed with weight-0 padding rows."""
    batch_size = _check_positive("batch_size", batch_size)
    labels = np.asarray(labels, np.int32)
    if labels.shape != (len(ids_a),):
        raise ValueError(f"labels must have shape ({len(ids_a)},), got {labels.shape}")
    input_ids, segment_ids, padding_mask = encode_classification_inputs(ids_a, ids_b, tokenizer, seq_len)
    for start in range(0, len(labels), batch_size):
        stop = min(start + batch_size, len(labels))
        fill = batch_size - (stop - start)

        def padded(x, value=0):
            return np.concatenate([x[start:stop], np.full((fill,) + x.shape[1:], value, x.dtype)])

        yield {"input_ids": padded(input_ids, tokenizer.pad_id), "segment_ids": padded(segment_ids),
               "padding_mask": padded(padding_mask, False), "labels": padded(labels),
               "weights": padded(np.ones(len(labels), np.float32), 0.0)}
