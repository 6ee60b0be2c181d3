"""Helpers the kernel tier's forms share (jax only): the matmul precision of the float32 forms,
their einsum, the exclusive prefix sum over chunks or segments, and the kernels' padding and
input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # IEEE float32 dots (never TF32 / bf16 passes)


def ein(spec: str, *operands: jax.Array) -> jax.Array:
    """`jnp.einsum` at HIGHEST precision with a float32 result: the float32 forms' contraction."""
    return jnp.einsum(spec, *operands, precision=HIGHEST, preferred_element_type=jnp.float32)


def exclusive_cumsum(x: jax.Array, axis: int, reverse: bool = False) -> jax.Array:
    """out[c] = sum_{c' < c} x[c'] along `axis` (c' > c when `reverse`); the first (last) is zero."""
    n = x.shape[axis]
    zero = jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))
    if reverse:
        rest = jnp.flip(jnp.cumsum(jnp.flip(jax.lax.slice_in_dim(x, 1, n, axis=axis), axis), axis), axis)
        return jnp.concatenate([rest, zero], axis)
    return jnp.concatenate([zero, jnp.cumsum(jax.lax.slice_in_dim(x, 0, n - 1, axis=axis), axis)], axis)


def pad_to(x: jax.Array, shape) -> jax.Array:
    """Zero-pad x at the end of every axis up to `shape` (no copy when nothing pads)."""
    if tuple(x.shape) == tuple(shape):
        return x
    return jnp.pad(x, [(0, n - m) for m, n in zip(x.shape, shape, strict=True)])


def check_core_inputs(q, k, v, key_scale, initial_state) -> None:
    """The kernels' shared contract: q (B, T, H, Dk), k (B, T, KV, Dk), v (B, T, KV, Dv) of one floating
    dtype with H % KV == 0, key_scale (B, T, H), initial_state (B, H, Dk, Dv); ValueError naming the shapes."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(a) != 4:
            raise ValueError(
                f"{name} must have rank 4, (batch, seq, heads, head_dim); got {name}.shape={tuple(jnp.shape(a))}"
            )
    if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"q, k and v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    b, t, h, dk = q.shape
    n_kv, dv = k.shape[2], v.shape[-1]
    if k.shape != (b, t, n_kv, dk) or v.shape[:3] != (b, t, n_kv) or h % n_kv or t < 1:
        raise ValueError(
            "expected q (B, T, H, Dk), k (B, T, KV, Dk), v (B, T, KV, Dv) with T >= 1 "
            f"and H % KV == 0; got q.shape={q.shape}, k.shape={k.shape}, v.shape={v.shape}"
        )
    if jnp.shape(key_scale) != (b, t, h):
        raise ValueError(
            f"key_scale must have shape (B, T, H) = {(b, t, h)}; got key_scale.shape={tuple(jnp.shape(key_scale))}"
        )
    if jnp.shape(initial_state) != (b, h, dk, dv):
        raise ValueError(
            f"initial_state must have shape (B, H, Dk, Dv) = {(b, h, dk, dv)}; "
            f"got initial_state.shape={tuple(jnp.shape(initial_state))}"
        )
