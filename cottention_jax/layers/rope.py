"""Rotary position embeddings (GPT-J convention) and the positions they rotate by.

Shapes: x (B, T, heads, head_dim); positions and padding masks (B, T).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["apply_rope", "positions_from_mask"]


def positions_from_mask(
    padding_mask: jax.Array | None, shape: tuple[int, ...], offset: jax.Array | None = None
) -> jax.Array:
    """Position of each token among the real tokens of its row: (B, T) int32.

    Left padding therefore does not shift positions. `offset` (B,) adds the
    number of real tokens seen before (decoding).
    """
    if padding_mask is None:
        pos = jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
    else:
        pos = jnp.maximum(jnp.cumsum(padding_mask.astype(jnp.int32), axis=1) - 1, 0)
    return pos if offset is None else pos + offset[:, None].astype(jnp.int32)


def apply_rope(x: jax.Array, positions: jax.Array, rotary_dim: int, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding on the first `rotary_dim` features of each head (GPT-J convention:
    interleaved pairs (x0, x1), (x2, x3), ... rotated by position * base^(-2i / rotary_dim)).

    x: (B, T, H, D); positions: (B, T) int. Returns x's shape and dtype.
    """
    inv_freq = base ** (-jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)  # (R/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, R/2)
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    rot = x[..., :rotary_dim].astype(jnp.float32)
    even, odd = rot[..., 0::2], rot[..., 1::2]
    rot = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(rot.shape)
    return jnp.concatenate([rot.astype(x.dtype), x[..., rotary_dim:]], axis=-1)
