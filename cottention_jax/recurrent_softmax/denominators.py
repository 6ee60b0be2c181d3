"""From numerator and denominator to the output row: the denominator variants and the gate.

Every form (parallel, recurrent, one decoding step) produces, per query row t,
    num_t = sum_{i<=t, real} kappa_ti v_i      (..., Dv)
    den_t = sum_{i<=t, real} kappa_ti          (...)
    n_t   = real tokens at positions <= t      (...)
and `combine` turns them into o_t (formulas in the package docstring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cottention_jax.recurrent_softmax.variants import AttentionVariant

__all__ = ["combine", "safe_denominator"]


def safe_denominator(den: jax.Array, eps: float) -> jax.Array:
    """sign(den) * max(|den|, eps) with sign(0) = +1: never zero, sign kept.

    Odd Taylor orders (and cosine features) give kernels that can be negative, so the
    true denominator can cross zero; this floor keeps 1/den finite (gradient 0 inside
    the floor) without flipping the sign of a negative den.
    """
    return jnp.where(den >= 0, jnp.maximum(den, eps), jnp.minimum(den, -eps))


def _normalise(num: jax.Array, how: str, eps: float) -> jax.Array:
    """Parameter-free norms of num over its last axis (Dv)."""
    if how == "l2":  # num / max(|num|, eps), via rsqrt(max(|num|^2, eps^2)): finite grad at 0
        return num * jax.lax.rsqrt(jnp.maximum(jnp.sum(num * num, -1, keepdims=True), eps * eps))
    if how == "rms":  # num / sqrt(mean(num^2) + eps)
        return num * jax.lax.rsqrt(jnp.mean(num * num, -1, keepdims=True) + eps)
    centred = num - jnp.mean(num, -1, keepdims=True)  # layernorm
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + eps)


def combine(
    variant: AttentionVariant, num: jax.Array, den: jax.Array, count: jax.Array, real: jax.Array, gate: jax.Array | None
) -> jax.Array:
    """o = gate(denominator(num, den, n)), zero on padded rows; float32.

    Args:
      num: (..., Dv) float32.  den: (...) float32.
      count: (...) int, real tokens so far (n_t), broadcast to den's shape.
      real: (...) bool, False for padded query rows (their output is exactly 0).
      gate: None or (..., Dv) / (..., 1), raw; o <- o * sigmoid(gate).
    """
    how = variant.denominator
    if how == "true":
        out = num / safe_denominator(den, variant.eps)[..., None]
    elif how == "detached":
        out = num / jax.lax.stop_gradient(safe_denominator(den, variant.eps))[..., None]
    elif how == "none":
        out = num
    elif how == "position":
        out = num / jnp.maximum(count, 1).astype(jnp.float32)[..., None]
    else:
        out = _normalise(num, how, variant.eps)
    if gate is not None:
        out = out * jax.nn.sigmoid(gate.astype(jnp.float32))
    return jnp.where(real[..., None], out, 0.0)
