"""Chunked causal linear attention in jnp + lax.scan: linear memory on any backend.

Computes the core of `reference.causal_linear_attention_reference`:
  k~_{i,h} = w_{i,h} k_{i,h//G};  o_t = q_t (S0 + sum_{i<=t} k~_i v_i^T)
chunk by chunk (chunk size C, in-chunk causal mask M, per query head):
  forward   O_c = Q_c H_c + ((Q_c K~_c^T) * M) V_c ;  H_{c+1} = H_c + K~_c^T V_c
  backward  (no per-chunk states kept: residuals are the inputs)
    forward sweep recomputes H_c:  dQ_c = dO_c H_c^T + ((dO_c V_c^T) * M) K~_c
    reverse sweep, G_c = dS_T + sum_{c' > c} Q_{c'}^T dO_{c'}:
      dK~_c = V_c G_c^T + ((dO_c V_c^T) * M)^T Q_c
      dV_c  = K~_c G_c + ((Q_c K~_c^T) * M)^T dO_c
    then dk = sum_{h in group} w dK~,  dw = <dK~, k>,  dv = sum_{h in group} dV,
    dS0 = G_{-1}.
Grouped heads are handled with a (KV, G) split of the head axis, so k and v
are never repeated per query head. All arithmetic is float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST
DEFAULT_CHUNK = 64


def _ein(spec: str, *xs: jax.Array) -> jax.Array:
    return jnp.einsum(spec, *xs, precision=_HI, preferred_element_type=jnp.float32)


def _to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """(B, T, ...) with T % chunk == 0 -> (T // chunk, B, chunk, ...) float32."""
    b, t = x.shape[:2]
    x = x.reshape(b, t // chunk, chunk, *x.shape[2:]).astype(jnp.float32)
    return jnp.moveaxis(x, 1, 0)


def _from_chunks(x: jax.Array, dtype) -> jax.Array:
    """(N, B, C, ...) -> (B, N * C, ...)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:]).astype(dtype)


def _pad_time(x: jax.Array, t_pad: int) -> jax.Array:
    if t_pad == x.shape[1]:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, t_pad - x.shape[1])
    return jnp.pad(x, widths)


def _prepare(q, k, v, w, chunk):
    """Pad T to a multiple of the chunk and split heads into (KV, G).

    Returns chunked float32 arrays: q (N,B,C,KV,G,Dk), k (N,B,C,KV,Dk),
    v (N,B,C,KV,Dv), w (N,B,C,KV,G). Padded keys get w = 0 and contribute nothing.
    """
    b, t, h, dk = q.shape
    kv = k.shape[2]
    t_pad = -(-t // chunk) * chunk
    q = _pad_time(q, t_pad).reshape(b, t_pad, kv, h // kv, dk)
    w = _pad_time(w, t_pad).reshape(b, t_pad, kv, h // kv)
    return (_to_chunks(q, chunk), _to_chunks(_pad_time(k, t_pad), chunk),
            _to_chunks(_pad_time(v, t_pad), chunk), _to_chunks(w, chunk))


def _grouped_state(s: jax.Array, kv: int) -> jax.Array:
    """(B, H, Dk, Dv) -> (B, KV, G, Dk, Dv) float32."""
    b, h = s.shape[:2]
    return s.astype(jnp.float32).reshape(b, kv, h // kv, *s.shape[2:])


def _forward(q, k, v, w, s0, chunk):
    b, t, h, _ = q.shape
    n_kv = k.shape[2]
    qc, kc, vc, wc = _prepare(q, k, v, w, chunk)
    mask = jnp.tril(jnp.ones((chunk, chunk), jnp.float32))

    def step(state, xs):  # state (B, KV, G, Dk, Dv)
        qi, ki, vi, wi = xs
        scores = _ein("bqkgd,bskd->bkgqs", qi, ki) * mask * jnp.moveaxis(wi, 1, -1)[..., None, :]
        out = _ein("bkgqs,bske->bqkge", scores, vi) + _ein("bqkgd,bkgde->bqkge", qi, state)
        state = state + _ein("bskd,bskg,bske->bkgde", ki, wi, vi)
        return state, out

    final, out = jax.lax.scan(step, _grouped_state(s0, n_kv), (qc, kc, vc, wc))
    out = _from_chunks(out, q.dtype)[:, :t].reshape(b, t, h, -1)
    return out, final.reshape(b, h, *final.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def chunked_linear_attention(q, k, v, key_scale, initial_state, chunk_size=DEFAULT_CHUNK):
    """Causal linear attention with per-(position, query head) key scales.

    q (B, T, H, Dk), k (B, T, KV, Dk), v (B, T, KV, Dv) in any float dtype;
    key_scale (B, T, H) and initial_state (B, H, Dk, Dv) float32.
    Returns (out (B, T, H, Dv) in q.dtype, final state (B, H, Dk, Dv) float32).
    Memory is linear in T: one C x C block per head at a time, and the
    backward pass keeps only the inputs.
    """
    return _forward(q, k, v, key_scale, initial_state, chunk_size)


def _fwd(q, k, v, key_scale, initial_state, chunk_size):
    out = _forward(q, k, v, key_scale, initial_state, chunk_size)
    return out, (q, k, v, key_scale, initial_state)


def _bwd(chunk, res, cotangents):
    q, k, v, w, s0 = res
    d_out, d_final = cotangents
    b, t, h, _ = q.shape
    n_kv = k.shape[2]
    qc, kc, vc, wc = _prepare(q, k, v, w, chunk)
    doc = _prepare(d_out, k, v, w, chunk)[0]       # (N, B, C, KV, G, Dv)
    mask = jnp.tril(jnp.ones((chunk, chunk), jnp.float32))

    def dq_step(state, xs):  # forward sweep: H_c before chunk c
        qi, ki, vi, wi, doi = xs
        dp = _ein("bqkge,bske->bkgqs", doi, vi) * mask * jnp.moveaxis(wi, 1, -1)[..., None, :]
        dq = _ein("bqkge,bkgde->bqkgd", doi, state) + _ein("bkgqs,bskd->bqkgd", dp, ki)
        state = state + _ein("bskd,bskg,bske->bkgde", ki, wi, vi)
        return state, dq

    _, dq = jax.lax.scan(dq_step, _grouped_state(s0, n_kv), (qc, kc, vc, wc, doc))

    def dkv_step(g, xs):  # reverse sweep: g = G_c
        qi, ki, vi, wi, doi = xs
        dp = _ein("bqkge,bske->bkgqs", doi, vi) * mask                    # (dO V^T) * M
        dkt = _ein("bske,bkgde->bskgd", vi, g) + _ein("bkgqs,bqkgd->bskgd", dp, qi)
        scores = _ein("bqkgd,bskd->bkgqs", qi, ki) * mask                  # (Q K^T) * M, unscaled
        dvh = _ein("bskd,bkgde->bskge", ki, g) * wi[..., None] \
            + _ein("bkgqs,bqkge->bskge", scores, doi) * wi[..., None]
        dk = jnp.sum(dkt * wi[..., None], axis=3)                          # (B, C, KV, Dk)
        dw = jnp.sum(dkt * ki[:, :, :, None, :], axis=-1)                 # (B, C, KV, G)
        g = g + _ein("bqkgd,bqkge->bkgde", qi, doi)
        return g, (dk, dw, jnp.sum(dvh, axis=3))

    g_last = _grouped_state(d_final, n_kv)
    d_s0, (dk, dw, dv) = jax.lax.scan(dkv_step, g_last, (qc, kc, vc, wc, doc), reverse=True)

    dq = _from_chunks(dq, q.dtype)[:, :t].reshape(q.shape)
    dk = _from_chunks(dk, k.dtype)[:, :t]
    dv = _from_chunks(dv, v.dtype)[:, :t]
    dw = _from_chunks(dw, w.dtype)[:, :t].reshape(w.shape)
    return dq, dk, dv, dw, d_s0.reshape(s0.shape).astype(s0.dtype)


chunked_linear_attention.defvjp(_fwd, _bwd)
