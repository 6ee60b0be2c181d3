"""Batches from prepared token streams, with Grain: random access, a global shuffle, exact resume.

Training (infinite): the train stream is cut into windows at fixed offsets; Grain shuffles the
window indices globally (a new permutation every epoch, from `seed`); global batch k is windows
k*B ... k*B + B - 1 of that order, and JAX process p of P reads only its rows of it, rows
p*B/P ... (p+1)*B/P - 1, so the processes' rows together are exactly the batch one process
would read (the same run on 1, 2 or 4 processes sees the same data). Each window is read from
the ArrayRecord records it spans (one or two); batches are prefetched on a background thread.
Nothing else is held: memory does not grow with the corpus.

    GPT:  window i = stream[i*T : i*T + T + 1]; inputs its first T tokens, targets its last T, so
          windows cross documents at the separator (eos), as GPT-2 was trained;
    MLM:  window i = stream[i*(T-2) : (i+1)*(T-2)]; row [CLS] window [SEP]; 15% of the non-special
          tokens masked BERT's way from (seed, process, batch number), so a resumed run sees the
          same masks.

`Batches.get_state()` is a small JSON dict (Grain's iterator state, a count of global batches,
plus the settings it is valid for); `set_state` on batches of the same data and settings continues
exactly. The state is the same in every process and does not name the process count, so a run
saved with P processes resumes with another number of them on the same batches.

Evaluation (finite, in order): every target token (GPT) or window (MLM) of the validation stream
exactly once, the last batch padded with weight-0 entries; process p again reads its rows only.

Batches (B = the global batch size, each process gets B / P rows; T = seq_len): GPT inputs / targets (B, T) int32,
weights (B, T) float32; MLM input_ids, segment_ids (B, T) int32, padding_mask (B, T) bool, mlm_labels
(B, T) int32, mlm_weights (B, T) float32.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from cottention_jax.data.batching import mask_tokens, require_roles, seeded_rng
from cottention_jax.data.prepare import PreparedText

__all__ = ["Batches", "TokenStream", "gpt_eval_batches", "gpt_train_batches", "mlm_eval_batches", "mlm_train_batches"]

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
        return joined[start - offset : stop - offset].astype(np.int32)


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
                raise ValueError(
                    f"state[{key!r}] is {state.get(key)!r} but these batches have {key}={value!r}: "
                    "the state belongs to other data or settings"
                )
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
        raise ValueError(
            f"{what} needs at least {span} tokens; the stream has {stream.num_tokens} (lower data.seq_len or add text)"
        )
    return count


def _rows(batch_size: int, shard_index: int, shard_count: int) -> int:
    """Rows of each global batch that one process reads."""
    _check("shard_count", shard_count)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}); got {shard_index}")
    if batch_size % shard_count:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the {shard_count} processes")
    return batch_size // shard_count


def _local_order(num: int, seed: int, batch_size: int, shard_index: int, shard_count: int) -> grain.MapDataset:
    """This process's window indices: its rows of every global batch of the shuffled, repeated order."""
    rows = _rows(batch_size, shard_index, shard_count)
    order = grain.MapDataset.range(num).shuffle(seed=seed).repeat(None)
    if shard_count == 1:
        return order
    return grain.MapDataset.range(len(order) // shard_count).map(
        lambda i: order[(i // rows) * batch_size + shard_index * rows + i % rows]
    )


def _settings(kind, prepared, batch_size, seq_len, seed) -> dict:
    return {
        "kind": kind,
        "data": prepared.meta["fingerprint"],
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seed": int(seed),
    }


# ----------------------------------------------------------------------------- GPT


def gpt_train_batches(
    prepared: PreparedText, batch_size: int, seq_len: int, seed: int = 0, shard_index: int = 0, shard_count: int = 1
) -> Batches:
    """Infinite causal-LM batches of the train split (see the module docstring)."""
    require_roles(prepared.tokenizer, ["eos"], "GPT batches")
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len)
    stream = TokenStream(prepared, "train")
    num = _windows(stream, seq_len + 1, seq_len, f"seq_len={seq_len}")

    def window(i):
        return stream.read(i * seq_len, i * seq_len + seq_len + 1)

    def to_batch(windows):
        return {
            "inputs": windows[:, :-1],
            "targets": windows[:, 1:],
            "weights": np.ones((len(windows), seq_len), np.float32),
        }

    rows = _rows(batch_size, shard_index, shard_count)
    ds = _local_order(num, seed, batch_size, shard_index, shard_count).map(window).batch(rows).map(to_batch)
    return Batches(ds, _settings("gpt", prepared, batch_size, seq_len, seed))


def gpt_eval_batches(
    prepared: PreparedText,
    batch_size: int,
    seq_len: int,
    split: str = "validation",
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every target token of the split exactly once, in order; padding has weight 0, so
    sum(loss * weights) / sum(weights) is the exact per-token loss. Row r of global batch k holds
    targets (k*B + r)*T ... (k*B + r + 1)*T - 1; this process reads its rows only."""
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len)
    rows = _rows(batch_size, shard_index, shard_count)
    stream = TokenStream(prepared, split)
    pad = prepared.tokenizer.pad_id if prepared.tokenizer.pad_id is not None else prepared.separator_id
    num_targets = stream.num_tokens - 1
    local = rows * seq_len
    for start in range(0, num_targets, batch_size * seq_len):
        first = start + shard_index * local  # this process's first input
        span = (
            stream.read(first, min(first + local + 1, stream.num_tokens))
            if first < stream.num_tokens
            else np.zeros(0, np.int32)
        )
        padded = np.full(local + 1, pad, np.int32)
        padded[: len(span)] = span
        weights = (np.arange(local) < len(span) - 1).astype(np.float32)
        yield {
            "inputs": padded[:-1].reshape(rows, seq_len),
            "targets": padded[1:].reshape(rows, seq_len),
            "weights": weights.reshape(rows, seq_len),
        }


# ----------------------------------------------------------------------------- BERT MLM


def _mlm_rows(windows: np.ndarray, tokenizer) -> np.ndarray:
    """(B, T-2) token windows -> (B, T) rows [CLS] window [SEP]."""
    b = len(windows)
    return np.concatenate(
        [np.full((b, 1), tokenizer.cls_id, np.int32), windows, np.full((b, 1), tokenizer.sep_id, np.int32)], axis=1
    )


def _masked_rows(rows, padding_mask, tok, seed: int, stream_id: int, first_row: int, mask_rate: float) -> dict:
    """MLM batch of (b, T) rows whose masks are drawn per global row number, so that they do not depend
    on how the batch is split over processes."""
    parts = [
        mask_tokens(
            rows[r : r + 1], padding_mask[r : r + 1], tok, seeded_rng(seed, stream_id, first_row + r), mask_rate
        )
        for r in range(len(rows))
    ]
    masked, labels, weights = (np.concatenate(x) for x in zip(*parts, strict=True))
    return {
        "input_ids": masked,
        "segment_ids": np.zeros_like(rows),
        "padding_mask": padding_mask,
        "mlm_labels": labels,
        "mlm_weights": weights,
    }


def mlm_train_batches(
    prepared: PreparedText,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    mask_rate: float = 0.15,
) -> Batches:
    """Infinite masked-LM batches of the train split (see the module docstring)."""
    tok = prepared.tokenizer
    require_roles(tok, ["pad", "cls", "sep", "mask"], "MLM batches")
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len, 3)
    rows = _rows(batch_size, shard_index, shard_count)
    stream = TokenStream(prepared, "train")
    body = seq_len - 2
    num = _windows(stream, body, body, f"seq_len={seq_len}")

    def to_batch(index, windows):
        full = _mlm_rows(windows, tok)
        return _masked_rows(
            full, np.ones(full.shape, bool), tok, seed, _MASK_STREAM, index * batch_size + shard_index * rows, mask_rate
        )

    ds = (
        _local_order(num, seed, batch_size, shard_index, shard_count)
        .map(lambda i: stream.read(i * body, (i + 1) * body))
        .batch(rows)
        .map_with_index(to_batch)
    )
    return Batches(ds, {**_settings("mlm", prepared, batch_size, seq_len, seed), "mask_rate": float(mask_rate)})


def mlm_eval_batches(
    prepared: PreparedText,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    split: str = "validation",
    mask_rate: float = 0.15,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every window of the split once, in order, masks fixed by (seed, row number); the last
    window is short (padding after its [SEP]) and the last batch is filled with empty rows.
    This process reads its rows of each global batch only."""
    tok = prepared.tokenizer
    require_roles(tok, ["pad", "cls", "sep", "mask"], "MLM evaluation batches")
    batch_size, seq_len = _check("batch_size", batch_size), _check("seq_len", seq_len, 3)
    rows = _rows(batch_size, shard_index, shard_count)
    stream = TokenStream(prepared, split)
    body = seq_len - 2
    starts = list(range(0, stream.num_tokens, body))
    for first in range(0, len(starts), batch_size):
        mine = first + shard_index * rows
        batch = np.full((rows, seq_len), tok.pad_id, np.int32)
        lengths = np.zeros(rows, np.int64)
        for r, start in enumerate(starts[mine : mine + rows]):
            piece = stream.read(start, min(start + body, stream.num_tokens))
            batch[r, 0], batch[r, 1 : len(piece) + 1], batch[r, len(piece) + 1] = tok.cls_id, piece, tok.sep_id
            lengths[r] = len(piece) + 2
        padding_mask = np.arange(seq_len)[None, :] < lengths[:, None]
        yield _masked_rows(batch, padding_mask, tok, seed, _EVAL_MASK_STREAM, mine, mask_rate)
