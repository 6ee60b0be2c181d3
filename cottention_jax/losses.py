"""Cross-entropy over weighted positions, whole or in chunks of positions.

Both return (mean, sums) with sums = {"loss_sum", "correct", "count"} (weighted):
the sums let an evaluation over many batches divide once, so padding (weight 0)
never counts.

`chunked_cross_entropy` never holds the (positions, V) float32 logits at once:
it runs the head and the loss over chunks of positions in a `lax.map` whose
body is under `jax.checkpoint`, so the backward pass recomputes each chunk's
logits instead of storing them. Peak logits memory is chunk x V, whatever the
batch and sequence length.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

__all__ = ["chunked_cross_entropy", "weighted_cross_entropy"]


def _sums(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> dict:
    """Weighted loss and correct-prediction sums: logits (..., V), labels/weights (...)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": (losses * weights).sum(), "correct": (correct * weights).sum(), "count": weights.sum()}


def _mean(sums: dict) -> jax.Array:
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0)


def _weights(weights: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    if weights is None:
        return jnp.ones(shape, jnp.float32)
    if weights.shape != shape:
        raise ValueError(f"weights must have the shape of labels {shape}; got weights.shape={weights.shape}")
    return weights.astype(jnp.float32)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None):
    """Mean cross-entropy (nats) over weighted positions, and the sums behind it.

    logits (..., V), labels (...) int, weights (...) or None (all 1). Returns
    (loss_sum / max(count, 1), {"loss_sum", "correct", "count"}).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits must have shape labels.shape + (V,); got logits.shape={logits.shape}, labels.shape={labels.shape}"
        )
    sums = _sums(logits, labels, _weights(weights, labels.shape))
    return _mean(sums), sums


def chunked_cross_entropy(
    hidden: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None,
    head_fn: Callable[[jax.Array], jax.Array],
    chunk: int,
):
    """`weighted_cross_entropy(head_fn(hidden), labels, weights)`, about `chunk` positions at a time.

    hidden (B, ..., d) are the features the head reads; labels (B, ...) int, or (N,) for
    one row of positions; weights like labels, or None; head_fn maps (B, c, d) -> (B, c, V)
    logits. Chunks cut along each row's positions, never across rows: each holds
    c = max(chunk // B, 1) positions of every row, so a batch axis sharded over devices
    stays sharded inside every chunk; the positions of a chunk are strided (every
    (P/c)-th), so a sequence axis sharded over devices stays sharded too. Rows are padded to a
    multiple of c with weight 0; a chunk's logits live only inside a rematerialised `lax.map` body (in the forward
    pass, and again in the backward pass).
    """
    try:
        size = operator.index(chunk)
    except TypeError:
        size = 0
    if isinstance(chunk, bool) or size < 1:
        raise ValueError(f"chunk must be an int >= 1 (positions per chunk); got chunk={chunk!r}")
    if labels.ndim == 0 or hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"hidden must have shape labels.shape + (d,) with labels of rank >= 1; got "
            f"hidden.shape={hidden.shape}, labels.shape={labels.shape}"
        )
    weights = _weights(weights, labels.shape)
    rows = 1 if labels.ndim == 1 else labels.shape[0]
    d = hidden.shape[-1]
    h, y, w = hidden.reshape(rows, -1, d), labels.reshape(rows, -1), weights.reshape(rows, -1)  # (B, P, ...)
    positions = y.shape[1]
    c = min(max(size // rows, 1), max(positions, 1))  # per row, per chunk
    n_chunks = -(-positions // c)
    pad = n_chunks * c - positions

    def split(x):  # (B, P, ...) -> (P/c, B, c, ...), the tail padded with zeros (weight 0)
        # Chunk j holds the strided positions j, j + P/c, j + 2 P/c, ...: a sequence split over
        # devices in contiguous pieces then keeps each chunk split the same way (every device
        # holds its share of every chunk), so the loop never gathers the sequence.
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(rows, c, n_chunks, *x.shape[2:]), 2, 0)

    @jax.checkpoint  # the backward pass recomputes a chunk's (B, c, V) logits instead of storing them
    def chunk_sums(xs):
        h_c, y_c, w_c = xs
        s = _sums(head_fn(h_c), y_c, w_c)
        return s["loss_sum"], s["correct"]

    loss_sums, correct = jax.lax.map(chunk_sums, (split(h), split(y), split(w)))  # (P/c,) each
    sums = {"loss_sum": loss_sums.sum(), "correct": correct.sum(), "count": weights.sum()}
    return _mean(sums), sums
