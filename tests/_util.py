"""Helpers for tests: relative errors and fresh random inputs."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

_counter = itertools.count()


def fresh_key() -> jax.Array:
    """A new PRNG key for every call, so no two tests share inputs."""
    return jax.random.PRNGKey(1000 + next(_counter))


def rel_error(actual, expected) -> float:
    """|actual - expected| / |expected| in the Frobenius norm, computed in float64."""
    a = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    e = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    assert np.all(np.isfinite(a)), "non-finite values in result"
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def random_qkv(key, b, t, h, kv, dk, dv, dtype=jnp.float32):
    """q (B,T,H,Dk), k (B,T,KV,Dk), v (B,T,KV,Dv) ~ N(0, 1), and a stabilizer (H,) ~ N(0.5, 1)."""
    kq, kk, kvv, km = jax.random.split(key, 4)
    q = jax.random.normal(kq, (b, t, h, dk), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (b, t, kv, dk), jnp.float32).astype(dtype)
    v = jax.random.normal(kvv, (b, t, kv, dv), jnp.float32).astype(dtype)
    m = 0.5 + jax.random.normal(km, (h,), jnp.float32)
    return q, k, v, m


def padding_mask(kind: str, b: int, t: int, key=None):
    """(B, T) bool: 'none' (all real), 'right' or 'left' padding with random lengths >= 1."""
    if kind == "none":
        return None
    key = fresh_key() if key is None else key
    lengths = jax.random.randint(key, (b,), 1, t + 1)
    pos = jnp.arange(t)[None, :]
    if kind == "right":
        return pos < lengths[:, None]
    if kind == "left":
        return pos >= (t - lengths)[:, None]
    raise ValueError(kind)
