"""The Pallas TPU (Mosaic) kernels behind `pallas_tpu.causal_linear_attention_pallas_tpu`.

Three kernels, each a `pallas_call` whose last grid axis walks the chunks of one
(batch, query head) in order ("arbitrary": sequential on one core) while the
leading axes are independent ("parallel": split across a megacore's cores).
The running d x d state lives in a float32 VMEM scratch across the chunk axis
and never reaches HBM; Pallas pipelines the chunk blocks (prefetching chunk
c + 1 while chunk c computes).

  forward  grid (B, H, Dv/BV, NC): S[:, v-block] (Dk, BV)
           O_c = Q_c S + ((Q_c K~_c^T) * M) V_c;   S += K~_c^T V_c
  dq       grid (B, H, Dk/BK, NC): S[k-block, :] (BK, Dv)
           dQ_c = dO_c S^T + ((dO_c V_c^T) * M) K~_c;   S += K~_c^T V_c
  dkv      grid (B, H, NC), chunks in reverse: G (Dk, Dv), from dS_T
           dK~_c = V_c G^T + ((dO_c V_c^T) * M)^T Q_c;   dV_c = K~_c G + ((Q_c K~_c^T) * M)^T dO_c
           G += Q_c^T dO_c;   at the end dS0 = G

with K~_c = key_scale_c * K_c and M the in-chunk causal mask (row t sees
columns s <= t). The dkv kernel also gives d key_scale = <dK~, k> per row and
dk = key_scale * dK~ per query head (summed over a GQA group by the caller).

Layouts (pallas_tpu.py pads and reshapes; every reshape is free):
  q, dO, out, dq:  (B, Tp, H * Dkp) or (B, Tp, H * Dvp): head h is lane block h
  k, v:            (B, Tp, KV * Dkp), (B, Tp, KV * Dvp): query head h reads kv head h // G
  key_scale, dw:   (B, H, NCp, C) float32, lane-dense: row c is chunk c's scales; a block holds
                   8 rows (8 chunks), so it is fetched (written) once per 8 chunks
                   (NCp = NC rounded up to a multiple of 8; a (T, 1) column would be padded
                   to 128 lanes in HBM)
  states:          (B, H, Dkp, Dvp) float32
Head dims are padded to multiples of 128 (the lane width), so every block's
last dim is a multiple of 128 and its second-to-last (the chunk C) a multiple
of 16: the tiles Mosaic needs for float32 and bfloat16.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b


@dataclasses.dataclass(frozen=True)
class TpuPlan:
    """Static facts of one call (hashable): sizes after padding and the launch."""

    chunk: int  # C
    n_chunks: int  # NC = Tp / C
    group: int  # G, query heads per kv head
    block_k: int  # BK, d_k columns per dq program (divides Dkp)
    block_v: int  # BV, d_v columns per forward program (divides Dvp)
    precision: lax.Precision | None  # HIGHEST for float32 inputs, else the MXU's bf16 with float32 sums


def _mm(a, b, dims, precision):
    """One MXU product with a float32 result; operands in the input dtype."""
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=_F32)


def _causal(a: jax.Array) -> jax.Array:
    """(C, C) with the strictly upper triangle (future keys) zeroed."""
    row = lax.broadcasted_iota(jnp.int32, a.shape, 0)
    col = lax.broadcasted_iota(jnp.int32, a.shape, 1)
    return jnp.where(row >= col, a, 0.0)


SCALE_ROWS = 8  # chunks per key_scale block: the sublane count of a float32 tile


def _scale_spec(chunk: int, index_map) -> pl.BlockSpec:
    """key_scale / dw blocks: 8 chunks' rows of (B, H, NCp, C); `index_map` gives the chunk."""
    return pl.BlockSpec(
        (None, None, SCALE_ROWS, chunk), lambda *g: (*index_map(*g)[:2], index_map(*g)[2] // SCALE_ROWS, 0)
    )


def _is_row(c, shape) -> jax.Array:
    """(8, C) mask of chunk c's row in its block of scales."""
    return lax.broadcasted_iota(jnp.int32, shape, 0) == c % SCALE_ROWS


def _row(ref, c) -> jax.Array:
    """Chunk c's scales from an (8, C) block as a (1, C) row (a masked sum over the sublanes: no
    dynamic sublane index, which Mosaic supports less widely than whole-tile vector work)."""
    block = ref[...]
    return jnp.sum(jnp.where(_is_row(c, block.shape), block, 0.0), axis=0, keepdims=True)


def _set_row(ref, c, row: jax.Array) -> None:
    """Write a (1, C) row as chunk c's row of an (8, C) output block (the other rows kept)."""
    block = ref[...]
    ref[...] = jnp.where(_is_row(c, block.shape), jnp.broadcast_to(row, block.shape), block)


def _column(row: jax.Array) -> jax.Array:
    """(1, C) -> (C, 1) without a transpose: the diagonal of the broadcast row, summed across lanes."""
    c = row.shape[1]
    eye = lax.broadcasted_iota(jnp.int32, (c, c), 0) == lax.broadcasted_iota(jnp.int32, (c, c), 1)
    return jnp.sum(jnp.where(eye, jnp.broadcast_to(row, (c, c)), 0.0), axis=1, keepdims=True)


def _as_row(column: jax.Array) -> jax.Array:
    """(C, 1) -> (1, C), the same way, summed across sublanes."""
    c = column.shape[0]
    eye = lax.broadcasted_iota(jnp.int32, (c, c), 0) == lax.broadcasted_iota(jnp.int32, (c, c), 1)
    return jnp.sum(jnp.where(eye, jnp.broadcast_to(column, (c, c)), 0.0), axis=0, keepdims=True)


def _interpret(interpret: bool):
    return pltpu.InterpretParams() if interpret else False


def _params(*semantics: Literal["parallel", "arbitrary"]) -> pltpu.CompilerParams:
    return pltpu.CompilerParams(dimension_semantics=semantics)


# ----------------------------------------------------------------------------- forward


def _forward_kernel(q_ref, k_ref, v_ref, w_ref, s0_ref, o_ref, s_out_ref, s_ref, *, precision):
    c = pl.program_id(3)

    @pl.when(c == 0)
    def _():
        s_ref[...] = s0_ref[...]

    q, k, v = q_ref[...], k_ref[...], v_ref[...]  # (C, Dk), (C, Dk), (C, BV)
    kt = (k.astype(_F32) * _column(_row(w_ref, c))).astype(k.dtype)  # K~_c: (C, Dk)
    a = _causal(_mm(q, kt, _NT, precision))  # (C, C)
    s = s_ref[...]  # S_c: (Dk, BV) float32
    out = _mm(q, s.astype(q.dtype), (((1,), (0,)), ((), ())), precision)
    out += _mm(a.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision)
    o_ref[...] = out.astype(o_ref.dtype)
    s_ref[...] = s + _mm(kt, v, _TN, precision)  # S_{c+1}

    @pl.when(c == pl.num_programs(3) - 1)
    def _():
        s_out_ref[...] = s_ref[...]


def forward(q, k, v, w, s0, plan: TpuPlan, interpret: bool):
    """out (B, Tp, H*Dvp) in q.dtype, S_T (B, H, Dkp, Dvp) float32."""
    b, tp, h, dkp = q.shape[0], q.shape[1], s0.shape[1], s0.shape[2]
    dvp = s0.shape[3]
    c, g, bv = plan.chunk, plan.group, plan.block_v
    nv = dvp // bv
    grid = (b, h, nv, plan.n_chunks)
    return pl.pallas_call(
        functools.partial(_forward_kernel, precision=plan.precision),
        grid=grid,
        in_specs=[
            pl.BlockSpec((None, c, dkp), lambda i, j, n, t: (i, t, j)),
            pl.BlockSpec((None, c, dkp), lambda i, j, n, t: (i, t, j // g)),
            pl.BlockSpec((None, c, bv), lambda i, j, n, t: (i, t, (j // g) * nv + n)),
            _scale_spec(c, lambda i, j, n, t: (i, j, t)),
            pl.BlockSpec((None, None, dkp, bv), lambda i, j, n, t: (i, j, 0, n)),
        ],
        out_specs=[
            pl.BlockSpec((None, c, bv), lambda i, j, n, t: (i, t, j * nv + n)),
            pl.BlockSpec((None, None, dkp, bv), lambda i, j, n, t: (i, j, 0, n)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, tp, h * dvp), q.dtype),
            jax.ShapeDtypeStruct((b, h, dkp, dvp), _F32),
        ],
        scratch_shapes=[pltpu.VMEM((dkp, bv), _F32)],
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
        interpret=_interpret(interpret),
        name="cosine_attn_tpu_forward",
    )(q, k, v, w, s0)


# ----------------------------------------------------------------------------- dq


def _dq_kernel(k_ref, v_ref, w_ref, do_ref, s0_ref, dq_ref, s_ref, *, precision):
    c = pl.program_id(3)

    @pl.when(c == 0)
    def _():
        s_ref[...] = s0_ref[...]

    k, v, do = k_ref[...], v_ref[...], do_ref[...]  # (C, BK), (C, Dv), (C, Dv)
    kt = (k.astype(_F32) * _column(_row(w_ref, c))).astype(k.dtype)  # K~_c[:, k-block]
    p = _causal(_mm(do, v, _NT, precision))  # (dO_c V_c^T) * M: (C, C)
    s = s_ref[...]  # S_c[k-block, :]: (BK, Dv)
    dq = _mm(do, s.astype(do.dtype), _NT, precision)
    dq += _mm(p.astype(kt.dtype), kt, (((1,), (0,)), ((), ())), precision)
    dq_ref[...] = dq.astype(dq_ref.dtype)
    s_ref[...] = s + _mm(kt, v, _TN, precision)


def backward_dq(k, v, w, do, s0, plan: TpuPlan, interpret: bool):
    """dq (B, Tp, H*Dkp) in k.dtype."""
    b, tp, h, dkp, dvp = k.shape[0], k.shape[1], s0.shape[1], s0.shape[2], s0.shape[3]
    c, g, bk = plan.chunk, plan.group, plan.block_k
    nk = dkp // bk
    return pl.pallas_call(
        functools.partial(_dq_kernel, precision=plan.precision),
        grid=(b, h, nk, plan.n_chunks),
        in_specs=[
            pl.BlockSpec((None, c, bk), lambda i, j, n, t: (i, t, (j // g) * nk + n)),
            pl.BlockSpec((None, c, dvp), lambda i, j, n, t: (i, t, j // g)),
            _scale_spec(c, lambda i, j, n, t: (i, j, t)),
            pl.BlockSpec((None, c, dvp), lambda i, j, n, t: (i, t, j)),
            pl.BlockSpec((None, None, bk, dvp), lambda i, j, n, t: (i, j, n, 0)),
        ],
        out_specs=pl.BlockSpec((None, c, bk), lambda i, j, n, t: (i, t, j * nk + n)),
        out_shape=jax.ShapeDtypeStruct((b, tp, h * dkp), k.dtype),
        scratch_shapes=[pltpu.VMEM((bk, dvp), _F32)],
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
        interpret=_interpret(interpret),
        name="cosine_attn_tpu_dq",
    )(k, v, w, do, s0)


# ----------------------------------------------------------------------------- dk, dv


def _dkv_kernel(q_ref, k_ref, v_ref, w_ref, do_ref, ds_ref, dk_ref, dv_ref, dw_ref, ds0_ref, g_ref, *, precision):
    c = pl.program_id(2)  # step c visits chunk NC - 1 - c
    chunk = pl.num_programs(2) - 1 - c

    @pl.when(c == 0)
    def _():
        g_ref[...] = ds_ref[...]  # G = dS_T

    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]  # (C, Dk), (C, Dk), (C, Dv), (C, Dv)
    w = _column(_row(w_ref, chunk))  # (C, 1) float32
    kt = (k.astype(_F32) * w).astype(k.dtype)  # K~_c
    a = _causal(_mm(q, kt, _NT, precision))  # (Q_c K~_c^T) * M
    p = _causal(_mm(do, v, _NT, precision))  # (dO_c V_c^T) * M
    g = g_ref[...]  # G_c = dS_T + sum_{c' > c} Q_{c'}^T dO_{c'}: (Dk, Dv) float32
    dkt = _mm(v, g.astype(v.dtype), _NT, precision) + _mm(p.astype(q.dtype), q, _TN, precision)  # dK~_c
    dv = _mm(kt, g.astype(kt.dtype), (((1,), (0,)), ((), ())), precision)
    dv += _mm(a.astype(do.dtype), do, _TN, precision)
    dk_ref[...] = (dkt * w).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    _set_row(dw_ref, chunk, _as_row(jnp.sum(dkt * k.astype(_F32), axis=1, keepdims=True)))  # <dK~, k> per row
    g_ref[...] = g + _mm(q, do, _TN, precision)

    @pl.when(c == pl.num_programs(2) - 1)
    def _():
        ds0_ref[...] = g_ref[...]


def backward_dkv(q, k, v, w, do, d_final, dk_dtype, dv_dtype, plan: TpuPlan, interpret: bool):
    """Per query head: dk (B, Tp, H*Dkp), dv (B, Tp, H*Dvp), d key_scale (B, H, NCp, C) float32,
    and dS0 (B, H, Dkp, Dvp) float32."""
    b, tp, h, dkp, dvp = q.shape[0], q.shape[1], d_final.shape[1], d_final.shape[2], d_final.shape[3]
    c, g, nc = plan.chunk, plan.group, plan.n_chunks

    def rev(t):
        return nc - 1 - t

    return pl.pallas_call(
        functools.partial(_dkv_kernel, precision=plan.precision),
        grid=(b, h, nc),
        in_specs=[
            pl.BlockSpec((None, c, dkp), lambda i, j, t: (i, rev(t), j)),
            pl.BlockSpec((None, c, dkp), lambda i, j, t: (i, rev(t), j // g)),
            pl.BlockSpec((None, c, dvp), lambda i, j, t: (i, rev(t), j // g)),
            _scale_spec(c, lambda i, j, t: (i, j, rev(t))),
            pl.BlockSpec((None, c, dvp), lambda i, j, t: (i, rev(t), j)),
            pl.BlockSpec((None, None, dkp, dvp), lambda i, j, t: (i, j, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, c, dkp), lambda i, j, t: (i, rev(t), j)),
            pl.BlockSpec((None, c, dvp), lambda i, j, t: (i, rev(t), j)),
            _scale_spec(c, lambda i, j, t: (i, j, rev(t))),
            pl.BlockSpec((None, None, dkp, dvp), lambda i, j, t: (i, j, 0, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, tp, h * dkp), dk_dtype),
            jax.ShapeDtypeStruct((b, tp, h * dvp), dv_dtype),
            jax.ShapeDtypeStruct(w.shape, _F32),
            jax.ShapeDtypeStruct((b, h, dkp, dvp), _F32),
        ],
        scratch_shapes=[pltpu.VMEM((dkp, dvp), _F32)],
        compiler_params=_params("parallel", "parallel", "arbitrary"),
        interpret=_interpret(interpret),
        name="cosine_attn_tpu_dkv",
    )(q, k, v, w, do, d_final)
