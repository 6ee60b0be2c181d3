"""Helpers the kernel tier's forms share (jax only): the matmul precision of the float32 forms,
their einsum, and the exclusive prefix sum over chunks or segments."""

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
