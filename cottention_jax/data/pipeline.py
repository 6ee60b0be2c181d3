"""Batches from prepared token streams, with Grain: random access, a global shuffle, exact resume.

Training (infinite): the train stream is cut into windows at fixed offsets; Grain shuffles the
window indices globally (a new permutation every epoch, from `seed`), slices them per JAX process
(`shard_index::shard_count`, after the shuffle, so processes read disjoint windows), reads each
window from the ArrayRecord records it spans (one or two), batches, and prefetches batches on a
background thread. Nothing else is held: memory does not grow with the corpus.

    GPT:  window i = stream[i*T : i*T + T + 1]; inputs its first T tokens, targets its last T, so
          windows cross documents at the separator (eos), as GPT-2 was trained;
    MLM:  window i = stream[i*(T-2) : (i+1)*(T-2)]; row [CLS] window [SEP]; 15% of the non-special
          tokens masked BERT's way from (seed, process, batch number), so a resumed run sees the
          same masks.

`Batches.get_state()` is a small JSON dict (Grain's iterator state plus the settings it is valid
for); `set_state` on batches of the same data and settings continues exactly.

Evaluation (finite, in order): every target token (GPT) or window (MLM) of the validation stream
exactly once, the last batch padded with weight-0 entries.

Batches (B = batch size per process, T = seq_len): GPT inputs / targets (B, T) int32, weights
(B, T) float32; MLM input_ids, segment_ids (B, T) int32, padding_mask (B, T) bool, mlm_labels
(B, T) int32, mlm_weights (B, T) float32.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from cottention_jax.data.batching import mask_tokens, require_roles, seeded_rng
from cottention_jax.data.prepare import PreparedText

__all__ = ["Batches", "TokenStream", "gpt_eval_batches", "gpt_train_batches", "mlm_eval_batches",
           "mlm_train_batches"]

_MASK_STREAM, _EVAL_MASK_STREAM = 1, 2
# Batches prefetched on one background thread: steps never wait on the host.
_READ_OPTIONS = dict(num_threads=1, prefetch_buffer_size=8)


class TokenStream:
    """Random access to one split's token stream: `read(start, stop)` -> (stop - start,) int32."""

    def __init__(self, prepared: PreparedText, split: str):
        if split not in prepared.splits:
            raise ValueError(f"split must be one of {prepared.splits}; got {split!r}")
        self.records = grain.sources.ArrayRecordDataSource(prepared.shards(split))
        self.record_tokens = int(prepared.meta["record_tokens"])
        self.dtype = np.dtype(prepared.meta["dtype"]).newbyteorder("<")
        self.num_tokens = prepared.num_tokens(split)

    def read(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"tokens [{start}, {stop}) are outside the stream of {self.num_tokens}")
        first, last = start // self.record_tokens, max(stop - 1, start) // self.record_tokens
        parts = [np.frombuffer(self.records[r], self.dtype) for r in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
        offset = first * self.record_tokens
        return joined[start - offset:stop - offset].astype(np.int32)


class Batches:
    """A resumable iterator over a Grain dataset of batches (see the module docstring)."""

    def __init__(self, dataset: grain.MapDataset, settings: dict):
        self.settings = settings
        self._iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(**_READ_OPTIONS)))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        """{"grain": the iterator's state, plus the settings the state is only valid for}."""
        return {"grain": self._iterator.get_state(), **self.settings}

    def set_state(self, state: dict) -> None:
        """Continue after the batch `state` was taken at; refuses a state of other data or settings."""
        if "grain" not in state:
            raise ValueError(f"state must come from Batches.get_state (a 'grain' entry); got keys {sorted(state)}")
        for key, value in self.settings.items():
            if state.get(key) != value:
                raise ValueError(f"state[{key!r}] is {state.get(key)!r} but these batches have {key}={value!r}: "
                                 "the state belongs to other data or settings")
        self._iterator.set_state(state["grain"])

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _check(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _windows(stream: TokenStream, span: int, stride: int, what: str) -> int:
    count = (stream.num_tokens - (span - stride)) // stride
    if count < 1:
        raise ValueError(f"{what} needs at least {span} tokens; the stream has {stream.num_tokens} "
                         "(lower data.seq_len or add text)")
    return count


def _shuffled(num: int, seed: int, shard_index: int, shard_count: int) -> grain.MapDataset:
    _check("shard_count", shard_count)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}); got {shard_index}")
    return grain.MapDataset.range(num).shuffle(seed=seed).repeat(None)[shard_index::shard_count]


def _settings(kind, prepared, batch_size, seq_len, seed, shard_index, shard_count) -> dict:
    return {"kind": kind, "data": prepared.meta["fingerprint"], "batch_size": batch_size, "seq_len": seq_len,
            "seed": int(seed), "shard": [shard_index, shard_count]}


# ----------------------------------------------------------------------------- GPT

def gpt_train_batches(prepared: PreparedText, batch_size: int, seq_len: int, seed: int = 0,
                      shard_index: int = 0, shard_count: int = 1) -> Batches:
    """Infinite causal-LM batches of the train split (see the module docstring)."""
    require_roles(prepared.tokenizer, ["eos"], "GPT batches")
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len)
    stream = TokenStream(prepared, "train")
    num = _windows(stream, seq_len + 1, seq_len, f"seq_len={seq_len}")

    def window(i):
        return stream.read(i * seq_len, i * seq_len + seq_len + 1)

    def to_batch(windows):
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
                "weights": np.ones((len(windows), seq_len), np.float32)}

    ds = _shuffled(num, seed, shard_index, shard_count).map(window).batch(batch_size).map(to_batch)
    return Batches(ds, _settings("gpt", prepared, batch_size, seq_len, seed, shard_index, shard_count))


def gpt_eval_batches(prepared: PreparedText, batch_size: int, seq_len: int,
                     split: str = "validation") -> Iterator[dict[str, np.ndarray]]:
    """Every target token of the split exactly once, in order; padding has weight 0, so
    sum(loss * weights) / sum(weights) is the exact per-token loss."""
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len)
    stream = TokenStream(prepared, split)
    pad = prepared.tokenizer.pad_id if prepared.tokenizer.pad_id is not None else prepared.separator_id
    num_targets = stream.num_tokens - 1
    per_batch = batch_size * seq_len
    for start in range(0, num_targets, per_batch):
        span = stream.read(start, min(start + per_batch + 1, stream.num_tokens))
        padded = np.full(per_batch + 1, pad, np.int32)
        padded[:len(span)] = span
        weights = (np.arange(per_batch) < len(span) - 1).astype(np.float32)
        yield {"inputs": padded[:-1].reshape(batch_size, seq_len), "targets": padded[1:].reshape(batch_size, seq_len),
               "weights": weights.reshape(batch_size, seq_len)}


# ----------------------------------------------------------------------------- BERT MLM

def _mlm_rows(windows: np.ndarray, tokenizer) -> np.ndarray:
    """(B, T-2) token windows -> (B, T) rows [CLS] window [SEP]."""
    b = len(windows)
    return np.concatenate([np.full((b, 1), tokenizer.cls_id, np.int32), windows,
                           np.full((b, 1), tokenizer.sep_id, np.int32)], axis=1)


def _mlm_batch(rows, padding_mask, tokenizer, rng, mask_rate):
    masked, labels, weights = mask_tokens(rows, padding_mask, tokenizer, rng, mask_rate)
    return {"input_ids": masked, "segment_ids": np.zeros_like(rows), "padding_mask": padding_mask,
            "mlm_labels": labels, "mlm_weights": weights}


def mlm_train_batches(prepared: PreparedText, batch_size: int, seq_len: int, seed: int = 0,
                      shard_index: int = 0, shard_count: int = 1, mask_rate: float = 0.15) -> Batches:
    """Infinite masked-LM batches of the train split (see the module docstring)."""
    tok = prepared.tokenizer
    require_roles(tok, ["pad", "cls", "sep", "mask"], "MLM batches")
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len, 3)
    stream = TokenStream(prepared, "train")
    body = seq_len - 2
    num = _windows(stream, body, body, f"seq_len={seq_len}")

    def to_batch(index, windows):
        rows = _mlm_rows(windows, tok)
        rng = seeded_rng(seed, _MASK_STREAM, shard_index, index)
        return _mlm_batch(rows, np.ones(rows.shape, bool), tok, rng, mask_rate)

    ds = (_shuffled(num, seed, shard_index, shard_count).map(lambda i: stream.read(i * body, (i + 1) * body))
          .batch(batch_size).map_with_index(to_batch))
    settings = {**_settings("mlm", prepared, batch_size, seq_len, seed, shard_index, shard_count),
                "mask_rate": float(mask_rate)}
    return Batches(ds, settings)


def mlm_eval_batches(prepared: PreparedText, batch_size: int, seq_len: int, seed: int = 0,
                     split: str = "validation", mask_rate: float = 0.15) -> Iterator[dict[str, np.ndarray]]:
    """Every window of the split once, in order, masks fixed by (seed, batch number); the last
    window is short (padding after its [SEP]) and the last batch is filled with empty rows."""
    tok = prepared.tokenizer
    require_roles(tok, ["pad", "cls", "sep", "mask"], "MLM evaluation batches")
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len, 3)
    stream = TokenStream(prepared, split)
    body = seq_len - 2
    starts = list(range(0, stream.num_tokens, body))
    for b, first in enumerate(range(0, len(starts), batch_size)):
        rows = np.full((batch_size, seq_len), tok.pad_id, np.int32)
        lengths = np.zeros(batch_size, np.int64)
        for r, start in enumerate(starts[first:first + batch_size]):
            piece = stream.read(start, min(start + body, stream.num_tokens))
            rows[r, 0], rows[r, 1:len(piece) + 1], rows[r, len(piece) + 1] = tok.cls_id, piece, tok.sep_id
            lengths[r] = len(piece) + 2
        padding_mask = np.arange(seq_len)[None, :] < lengths[:, None]
        yield _mlm_batch(rows, padding_mask, tok, seeded_rng(seed, _EVAL_MASK_STREAM, b), mask_rate)
