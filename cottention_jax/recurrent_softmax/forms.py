"""The three forms that compute (num, den) per query row: parallel, recurrent (chunked), one step.

Inputs here are already checked, float32, and zero at padded positions:
q (B, T, H, D), k (B, T, KV, D), v (B, T, KV, Dv), real (B, T) bool. Query heads are
split as (KV, G), G = H // KV, so keys, values and states are never repeated per
query head: the RNN state belongs to a kv head.

State after a prefix (per kv head):  S = sum_i phi_k(k_i) v_i^T  (F, Dv),
                                     z = sum_i phi_k(k_i)        (F,),  plus the count n.
Read-out:  num_t = phi_q(q_t)^T S_t,  den_t = phi_q(q_t) . z_t.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cottention_jax._util import ein as _ein
from cottention_jax.recurrent_softmax.features import (
    feature_dim,
    key_features,
    pair_kernel,
    query_features,
)
from cottention_jax.recurrent_softmax.variants import AttentionVariant

__all__ = ["RecurrentSoftmaxState", "parallel_form", "recurrent_form", "step_form", "zero_state"]


class RecurrentSoftmaxState(NamedTuple):
    """The RNN state of a recurrent-capable variant after some prefix; float32 sums.

    numerator:   (B, KV, F, Dv)  S = sum_i phi_k(k_i) v_i^T over real tokens i
    denominator: (B, KV, F)      z = sum_i phi_k(k_i)
    count:       (B,) int32      real tokens seen
    F = `feature_dim(variant, head_dim)`; for Taylor order N the feature axis holds
    the orders 0..N one after the other (S^0, S^1, ..., S^N of the paper).
    """

    numerator: jax.Array
    denominator: jax.Array
    count: jax.Array  # type: ignore[assignment]  # a field named like tuple.count, which it hides


def zero_state(
    variant: AttentionVariant, batch: int, kv_heads: int, head_dim: int, value_dim: int
) -> RecurrentSoftmaxState:
    """The state of an empty prefix: zeros, count 0."""
    f = feature_dim(variant, head_dim)
    return RecurrentSoftmaxState(
        jnp.zeros((batch, kv_heads, f, value_dim), jnp.float32),
        jnp.zeros((batch, kv_heads, f), jnp.float32),
        jnp.zeros((batch,), jnp.int32),
    )


def _group(q: jax.Array, n_kv: int) -> jax.Array:
    """(B, T, H, D) -> (B, T, KV, G, D)."""
    b, t, h, d = q.shape
    return q.reshape(b, t, n_kv, h // n_kv, d)


def _read_state(variant, qg, state, scale):
    """phi_q(q_t) against a state: num (B, T, KV, G, Dv), den (B, T, KV, G)."""
    phi_q = query_features(variant, qg, scale)  # (B, T, KV, G, F)
    return (_ein("btkgf,bkfe->btkge", phi_q, state.numerator), _ein("btkgf,bkf->btkg", phi_q, state.denominator))


def _add_to_state(variant, state, k, v, real):
    """S += sum_i real_i phi_k(k_i) v_i^T, z += sum_i real_i phi_k(k_i), n += sum_i real_i."""
    phi_k = key_features(variant, k) * real[:, :, None, None]  # (B, T, KV, F)
    return RecurrentSoftmaxState(
        state.numerator + _ein("btkf,btke->bkfe", phi_k, v),
        state.denominator + jnp.sum(phi_k, axis=1),
        state.count + jnp.sum(real, axis=1, dtype=jnp.int32),
    )


def parallel_form(
    variant: AttentionVariant, q, k, v, real, scale: float, state0: RecurrentSoftmaxState | None, return_state: bool
):
    """Quadratic, any variant: the (T, T) kernel matrix per head, causal and padding masked.

    Returns num (B, T, H, Dv), den (B, T, H), final state or None. With `state0` (only
    for recurrent-capable variants) every row also reads the state; the final state
    is the sum over this sequence added to it.
    """
    b, t, h, _ = q.shape
    n_kv = k.shape[2]
    qg = _group(q, n_kv)
    keep = jnp.tril(jnp.ones((t, t), bool))[None, None, None] & real[:, None, None, None, :]
    kern = pair_kernel(variant, qg, k, "btkgd,bskd->bkgts", scale, keep)  # (B, KV, G, T, T)
    num = _ein("bkgts,bske->btkge", kern, v)
    den = jnp.moveaxis(jnp.sum(kern, axis=-1), -1, 1)  # (B, T, KV, G)
    final = None
    if state0 is not None:
        num0, den0 = _read_state(variant, qg, state0, scale)
        num, den = num + num0, den + den0
    if return_state:
        start = state0 if state0 is not None else zero_state(variant, b, n_kv, q.shape[-1], v.shape[-1])
        final = _add_to_state(variant, start, k, v, real)
    return num.reshape(b, t, h, -1), den.reshape(b, t, h), final


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """(B, T, ...) with T % chunk == 0 -> (T // chunk, B, chunk, ...)."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 1, 0)


def _unchunk(x: jax.Array, t: int) -> jax.Array:
    """(N, B, C, ...) -> (B, N * C, ...)[:, :t]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


def recurrent_form(variant: AttentionVariant, q, k, v, real, scale: float, state0: RecurrentSoftmaxState, chunk: int):
    """lax.scan over chunks of C positions, carrying (S, z); linear memory in T.

    Per chunk c with in-chunk causal mask M and kernel matrix K_c = kappa(Q_c, K_c) * M:
      num_c = phi_q(Q_c) S_c + K_c V_c,   den_c = phi_q(Q_c) z_c + K_c 1
      S_{c+1} = S_c + phi_k(K_c)^T V_c,   z_{c+1} = z_c + phi_k(K_c)^T 1
    The body is rematerialised in the backward pass (jax.checkpoint), so autodiff
    keeps one (S, z) per chunk, (T / C) * F * (Dv + 1) floats per kv head, plus the inputs.
    Returns num (B, T, H, Dv), den (B, T, H), final state.
    """
    b, t, h, d = q.shape
    n_kv = k.shape[2]
    chunk = max(1, min(chunk, t))
    t_pad = -(-t // chunk) * chunk
    widths = lambda x: [(0, 0), (0, t_pad - t)] + [(0, 0)] * (x.ndim - 2)  # noqa: E731
    qc, kc, vc, rc = (
        _chunks(jnp.pad(x, widths(x)), chunk) for x in (_group(q, n_kv), k, v, real)
    )  # padded tail: real = False
    tril = jnp.tril(jnp.ones((chunk, chunk), bool))

    @jax.checkpoint
    def body(carry, xs):
        s, z = carry  # (B, KV, F, Dv), (B, KV, F)
        qi, ki, vi, ri = xs  # (B, C, KV, G, D), ...
        phi_q = query_features(variant, qi, scale)  # (B, C, KV, G, F)
        keep = tril[None, None, None] & ri[:, None, None, None, :]
        kern = pair_kernel(variant, qi, ki, "bqkgd,bskd->bkgqs", scale, keep)
        num = _ein("bqkgf,bkfe->bqkge", phi_q, s) + _ein("bkgqs,bske->bqkge", kern, vi)
        den = _ein("bqkgf,bkf->bqkg", phi_q, z) + jnp.moveaxis(jnp.sum(kern, -1), -1, 1)
        phi_k = key_features(variant, ki) * ri[:, :, None, None]  # (B, C, KV, F)
        s = s + _ein("bskf,bske->bkfe", phi_k, vi)
        z = z + jnp.sum(phi_k, axis=1)
        return (s, z), (num, den)

    (s, z), (num, den) = jax.lax.scan(body, (state0.numerator, state0.denominator), (qc, kc, vc, rc))
    final = RecurrentSoftmaxState(s, z, state0.count + jnp.sum(real, axis=1, dtype=jnp.int32))
    return _unchunk(num, t).reshape(b, t, h, -1), _unchunk(den, t).reshape(b, t, h), final


def step_form(variant: AttentionVariant, state: RecurrentSoftmaxState, q_t, k_t, v_t, real_t, scale: float):
    """One position: add k_t, v_t to the state (if real), then read it with q_t.

    q_t (B, H, D), k_t (B, KV, D), v_t (B, KV, Dv), real_t (B,) bool.
    Returns num (B, H, Dv), den (B, H), new state.
    """
    b, h, _ = q_t.shape
    n_kv = k_t.shape[1]
    state = _add_to_state(variant, state, k_t[:, None], v_t[:, None], real_t[:, None])
    num, den = _read_state(variant, _group(q_t[:, None], n_kv), state, scale)
    return num.reshape(b, h, -1), den.reshape(b, h), state
