"""Chunked causal linear attention in jnp, chunk-parallel: linear memory on any backend.

Computes the core of `reference.causal_linear_attention_reference`:
  k~_{i,h} = w_{i,h} k_{i,h//G};  o_t = q_t (S0 + sum_{i<=t} k~_i v_i^T)
over chunks of C positions (in-chunk causal mask M, per query head), with no
sequential loop: every chunk's starting state comes from one prefix sum.
  forward   U_c = K~_c^T V_c                      (all chunks at once)
            H_c = S0 + sum_{c' < c} U_{c'}        (exclusive prefix sum over chunks)
            O_c = Q_c H_c + ((Q_c K~_c^T) * M) V_c,   S_T = H_last + U_last
  backward  (custom_vjp; residuals are the inputs, H and G are recomputed)
            dQ_c  = dO_c H_c^T + ((dO_c V_c^T) * M) K~_c
            G_c   = dS_T + sum_{c' > c} Q_{c'}^T dO_{c'}   (reverse exclusive prefix sum)
            dK~_c = V_c G_c^T + ((dO_c V_c^T) * M)^T Q_c
            dV_c  = K~_c G_c + ((Q_c K~_c^T) * M)^T dO_c
            dk = sum_{h in group} w dK~,  dw = <dK~, k>,  dv = sum_{h in group} dV,  dS0 = G_{-1}.
Memory: the per-chunk states (T/C x Dk x Dv per head) and in-chunk scores
(T/C x C x C per head) are each about the size of one input for C ~ D: linear
in T; nothing is seq x seq or seq x D x D. Grouped heads use a (KV, G) split of
the head axis, so k and v are never repeated per query head. All float32.
Range: out and S_T are linear in (v, S0) jointly, so the scan runs on v / 2^c and S0 / 2^c (c per
batch row and kv head, bringing their largest finite entry to [1, 2)) and its results are multiplied
by 2^c, exactly; in the backward pass dq and dK~ (linear in them) likewise, dv and dS0 are free of them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.cosine_attn._util import ein as _ein
from pallas_kernels.cosine_attn._util import exclusive_cumsum
from pallas_kernels.cosine_attn.reference import power_of_two, range_exponent, times_power_of_two

__all__ = ["DEFAULT_CHUNK", "bidirectional_linear_attention_xla", "causal_linear_attention_xla"]

DEFAULT_CHUNK = 64


def _pad_time(x: jax.Array, t_pad: int) -> jax.Array:
    if t_pad == x.shape[1]:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, t_pad - x.shape[1])
    return jnp.pad(x, widths)


def _chunks(x: jax.Array, chunk: int, group: int | None = None) -> jax.Array:
    """Head-major chunks, float32, T padded to N * C with zeros:
    (B, T, KV, D) -> (B, KV, N, C, D), or with `group` G (query side, heads H = KV * G)
    (B, T, H, D) -> (B, KV, N, G, C, D). Batch axes lead, so every einsum below is a
    plain batched matmul without transposes.
    """
    b, t, heads, d = x.shape
    t_pad = -(-t // chunk) * chunk
    x = _pad_time(x.astype(jnp.float32), t_pad).reshape(b, t_pad // chunk, chunk, heads, d)
    if group is None:
        return x.transpose(0, 3, 1, 2, 4)
    x = x.reshape(b, t_pad // chunk, chunk, heads // group, group, d)
    return x.transpose(0, 3, 1, 4, 2, 5)


def _unchunk(x: jax.Array, t: int, dtype) -> jax.Array:
    """(B, KV, N, G, C, D) -> (B, T, KV * G, D) in dtype."""
    b, kv, n, g, c, d = x.shape
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, n * c, kv * g, d)[:, :t].astype(dtype)


def _unchunk_kv(x: jax.Array, t: int, dtype) -> jax.Array:
    """(B, KV, N, C, D) -> (B, T, KV, D) in dtype."""
    b, kv, n, c, d = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(b, n * c, kv, d)[:, :t].astype(dtype)


def _masked(scores: jax.Array, chunk: int) -> jax.Array:
    """The in-chunk causal mask M applied with `where`, so a NaN key never reaches earlier rows
    (a product would: NaN * 0 is NaN)."""
    return jnp.where(jnp.tril(jnp.ones((chunk, chunk), bool)), scores, 0.0)


def _prepare(q, k, v, w, chunk):
    """q (B,KV,N,G,C,Dk), k (B,KV,N,C,Dk), v (B,KV,N,C,Dv), w (B,KV,N,G,C), all float32.

    Padded positions are zero, so they add nothing to any sum (w = 0 on padded keys).
    """
    group = q.shape[2] // k.shape[2]
    return (_chunks(q, chunk, group), _chunks(k, chunk), _chunks(v, chunk), _chunks(w[..., None], chunk, group)[..., 0])


def _chunk_states(kc, vc, wc, s0):
    """H_c (B, KV, N, G, Dk, Dv): the state before each chunk, and S_T (B, KV, G, Dk, Dv)."""
    updates = _ein("bkngsd,bknse->bkngde", kc[:, :, :, None] * wc[..., None], vc)  # U_c = K~_c^T V_c
    before = s0[:, :, None] + exclusive_cumsum(updates, axis=2)
    return before, before[:, :, -1] + updates[:, :, -1]


def _grouped_state(s: jax.Array, n_kv: int) -> jax.Array:
    """(B, H, Dk, Dv) -> (B, KV, G, Dk, Dv) float32."""
    b, h = s.shape[:2]
    return s.astype(jnp.float32).reshape(b, n_kv, h // n_kv, *s.shape[2:])


def _value_exponent(v, s0, n_kv):
    """c (B, KV): the power of two that brings max |v| (over T, Dv) and max |S0| (over the group's heads)
    to [1, 2), and v / 2^c (B, T, KV, Dv), S0 / 2^c (B, H, Dk, Dv) in float32. Out and the final state
    are linear in (v, S0) jointly, so the scan runs on these and its results are multiplied by 2^c:
    no partial sum overflows (or underflows) unless its result does."""
    b, h = s0.shape[:2]
    vf, s0g = v.astype(jnp.float32), _grouped_state(s0, n_kv)
    c = jnp.maximum(range_exponent(vf, axis=(1, 3))[:, 0, :, 0], range_exponent(s0g, axis=(2, 3, 4))[:, :, 0, 0, 0])
    s0s = (s0g * power_of_two(-c)[:, :, None, None, None]).reshape(s0.shape)
    return c, vf * power_of_two(-c)[:, None, :, None], s0s


def _forward(q, k, v, w, s0, chunk):
    b, t, h, _ = q.shape
    n_kv = k.shape[2]
    c, v, s0 = _value_exponent(v, s0, n_kv)
    qc, kc, vc, wc = _prepare(q, k, v, w, chunk)
    states, final = _chunk_states(kc, vc, wc, _grouped_state(s0, n_kv))
    scores = _masked(_ein("bkngqd,bknsd->bkngqs", qc, kc) * wc[..., None, :], chunk)  # (Q K~^T) * M
    out = _ein("bkngqs,bknse->bkngqe", scores, vc) + _ein("bkngqd,bkngde->bkngqe", qc, states)
    out = times_power_of_two(out, c[:, :, None, None, None, None])  # back to v's scale
    final = times_power_of_two(final, c[:, :, None, None, None])
    return _unchunk(out, t, q.dtype), final.reshape(b, h, *final.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def causal_linear_attention_xla(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_scale: jax.Array,
    initial_state: jax.Array,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """Causal linear attention with per-(position, query head) key scales.

    q (B, T, H, Dk), k (B, T, KV, Dk), v (B, T, KV, Dv) in any float dtype;
    key_scale (B, T, H) and initial_state (B, H, Dk, Dv) float32.
    Returns (out (B, T, H, Dv) in q.dtype, final state (B, H, Dk, Dv) float32).
    Memory is linear in T; the backward pass keeps only the inputs.
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
    c, v_s, s0_s = _value_exponent(v, s0, n_kv)  # the forward's scale
    qc, kc, vc, wc = _prepare(q, k, v_s, w, chunk)
    doc = _chunks(d_out, chunk, h // n_kv)  # (B, KV, N, G, C, Dv)
    states, _ = _chunk_states(kc, vc, wc, _grouped_state(s0_s, n_kv))  # H_c / 2^c
    dp = _masked(_ein("bkngqe,bknse->bkngqs", doc, vc), chunk)  # (dO V^T) * M
    dq = _ein("bkngqe,bkngde->bkngqd", doc, states) + _ein("bkngqs,bknsd->bkngqd", dp * wc[..., None, :], kc)

    q_do = _ein("bkngqd,bkngqe->bkngde", qc, doc)  # Q_c^T dO_c
    g = _grouped_state(d_final, n_kv)[:, :, None] + exclusive_cumsum(q_do, axis=2, reverse=True)  # G_c
    dkt = _ein("bknse,bkngde->bkngsd", vc, g) + _ein("bkngqs,bkngqd->bkngsd", dp, qc)
    scores = _masked(_ein("bkngqd,bknsd->bkngqs", qc, kc), chunk)  # (Q K^T) * M, unscaled
    dvh = (_ein("bknsd,bkngde->bkngse", kc, g) + _ein("bkngqs,bkngqe->bkngse", scores, doc)) * wc[..., None]
    d_s0 = g[:, :, 0] + q_do[:, :, 0]  # G_{-1}

    # dq, dk~ are linear in (v, S0), computed from them / 2^c: times 2^c; dv, dS0 do not involve them
    dq = times_power_of_two(dq, c[:, :, None, None, None, None])
    dkt = times_power_of_two(dkt, c[:, :, None, None, None, None])
    dk = jnp.sum(dkt * wc[..., None], axis=3)  # (B, KV, N, C, Dk)
    dw = jnp.sum(dkt * kc[:, :, :, None], axis=-1)  # (B, KV, N, G, C)
    dv = jnp.sum(dvh, axis=3)
    return (
        _unchunk(dq, t, q.dtype),
        _unchunk_kv(dk, t, k.dtype),
        _unchunk_kv(dv, t, v.dtype),
        _unchunk(dw[..., None], t, w.dtype)[..., 0],
        d_s0.reshape(s0.shape).astype(s0.dtype),
    )


causal_linear_attention_xla.defvjp(_fwd, _bwd)


# ----------------------------------------------------------------------------- bidirectional


@jax.custom_vjp
def bidirectional_linear_attention_xla(q: jax.Array, k: jax.Array, v: jax.Array, row_scale: jax.Array) -> jax.Array:
    """o_t = (q_t (K^T V)) * row_scale per query head, in float32: two matmuls, linear memory.

    q (B, T, H, Dk), k (B, T, KV, Dk), v (B, T, KV, Dv) in any float dtype (query head h reads kv
    head h // G); row_scale (B, H) float32. Returns (B, T, H, Dv) float32.
    Range: the state is formed as (K / 2^a)^T (V / 2^c), powers of two per (batch, kv head) that bring
    max |k| and max |v| to [1, 2) (`reference.range_exponent`; exact), and the output is multiplied by
    2^(a + c) last, so K^T V can neither overflow nor underflow unless the output itself does. The
    backward pass keeps every product at the scale of its result the same way (autodiff of the
    scaling would carry 2^(a + c) dO, which overflows).
    """
    return _bidirectional_fwd(q, k, v, row_scale)[0]


def _bidirectional_parts(q, k, v):
    """float32 q (B, T, KV, G, Dk), k / 2^a, v / 2^c, (K / 2^a)^T (V / 2^c) (B, KV, Dk, Dv), a and c (B, KV)."""
    b, t, h, dk = q.shape
    n_kv = k.shape[2]
    kf, vf = k.astype(jnp.float32), v.astype(jnp.float32)
    a, c = range_exponent(kf, axis=(1, 3)), range_exponent(vf, axis=(1, 3))  # (B, 1, KV, 1)
    ks, vs = kf * power_of_two(-a), vf * power_of_two(-c)
    qg = q.astype(jnp.float32).reshape(b, t, n_kv, h // n_kv, dk)
    return qg, ks, vs, _ein("bskd,bske->bkde", ks, vs), a[:, 0, :, 0], c[:, 0, :, 0]


def _bidirectional_fwd(q, k, v, row_scale):
    b, t, h, _ = q.shape
    n_kv = k.shape[2]
    qg, _, _, kv, a, c = _bidirectional_parts(q, k, v)
    y = _ein("btkgd,bkde->btkge", qg, kv) * row_scale.reshape(b, 1, n_kv, h // n_kv, 1)
    out = times_power_of_two(y, (a + c)[:, None, :, None, None])  # times 2^(a + c) last
    return out.reshape(b, t, h, -1), (q, k, v, row_scale)


def _bidirectional_bwd(res, d_out):
    q, k, v, row_scale = res
    b, t, h, _ = q.shape
    n_kv = k.shape[2]
    qg, ks, vs, kv, a, c = _bidirectional_parts(q, k, v)  # recomputed; the state is small
    do = d_out.astype(jnp.float32).reshape(b, t, n_kv, h // n_kv, -1)
    dy = do * row_scale.reshape(b, 1, n_kv, h // n_kv, 1)  # cotangent of q (K^T V)
    dq = times_power_of_two(_ein("btkge,bkde->btkgd", dy, kv), (a + c)[:, None, :, None, None])  # dY (K^T V)^T
    d_kv = _ein("btkgd,btkge->bkde", qg, dy)  # Q^T dY: free of k and v
    dk = times_power_of_two(_ein("bske,bkde->bskd", vs, d_kv), c[:, None, :, None])  # V d(K^T V)^T
    dv = times_power_of_two(_ein("bskd,bkde->bske", ks, d_kv), a[:, None, :, None])  # K d(K^T V)
    y = _ein("btkgd,bkde->btkge", qg, kv)
    d_row = times_power_of_two(jnp.sum(do * y, axis=(1, 4)), (a + c)[:, :, None])  # <dO, q K^T V>
    return (
        dq.reshape(q.shape).astype(q.dtype),
        dk.astype(k.dtype),
        dv.astype(v.dtype),
        d_row.reshape(b, h).astype(row_scale.dtype),
    )


bidirectional_linear_attention_xla.defvjp(_bidirectional_fwd, _bidirectional_bwd)
