"""The Pallas TPU (Mosaic) kernels behind `pallas_tpu.causal_linear_attention_pallas_tpu`.

Three kernels, each a `pallas_call` whose grid walks, for one (batch, kv head, head-dim
block), the chunks in order and within each chunk the G query heads of the kv head's
group ("arbitrary" axes: sequential on one core); the leading axes are independent
("parallel": split across a megacore's cores). The G running d x d states live in a
float32 VMEM scratch and never reach HBM. A block whose index does not change between
consecutive grid steps is not fetched again, so each chunk of k and v is read once per
kv head, not once per query head, and the dkv kernel sums dk and dv over the group in
VMEM before writing them once per kv head. Pallas pipelines the blocks (prefetching
the next step's while this one computes).

  forward  grid (B, KV, Dv/BV, NC, G): S_h[:, v-block] (Dk, BV) per query head
           O_c = Q_c S + ((Q_c K~_c^T) * M) V_c;   S += K~_c^T V_c
  dq       grid (B, KV, Dk/BK, NC, G): S_h[k-block, :] (BK, Dv)
           dQ_c = dO_c S^T + ((dO_c V_c^T) * M) K~_c;   S += K~_c^T V_c
  dkv      grid (B, KV, NC, G), chunks in reverse: G_h (Dk, Dv), from dS_T
           dK~_c = V_c G^T + ((dO_c V_c^T) * M)^T Q_c;   dV_c = K~_c G + ((Q_c K~_c^T) * M)^T dO_c
           G += Q_c^T dO_c;   at the end dS0 = G

with K~_c = key_scale_c * K_c (the scale of query head h) and M the in-chunk causal
mask (row t sees columns s <= t). The dkv kernel also gives d key_scale = <dK~, k> per
row, and dk = sum over the group of key_scale * dK~, dv = sum over the group of dV.

Layouts (pallas_tpu.py pads and reshapes; every reshape is free):
  q, dO, out, dq:  (B, Tp, H * Dkp) or (B, Tp, H * Dvp): head h is lane block h
  k, v, dk, dv:    (B, Tp, KV * Dkp), (B, Tp, KV * Dvp): query head h = kv G + g reads kv head kv
  key_scale, dw:   (B, H, NCp, C) float32, lane-dense: row c is chunk c's scales; a block holds
                   the group's G heads x 8 rows (8 chunks), fetched (written) once per 8 chunks
                   (NCp = NC rounded up to a multiple of 8; a (T, 1) column would be padded
                   to 128 lanes in HBM)
  states:          (B, H, Dkp, Dvp) float32, a block of G heads per kv head
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
_NN = (((1,), (0,)), ((), ()))  # a @ b


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


def _scale_spec(group: int, chunk: int, index_map) -> pl.BlockSpec:
    """key_scale / dw blocks of (B, H, NCp, C): the G heads of a kv head x 8 chunks' rows.
    `index_map` gives (batch, kv head, chunk)."""

    def blocks(*grid):
        b, kv, c = index_map(*grid)
        return b, kv, c // SCALE_ROWS, 0

    return pl.BlockSpec((None, group, SCALE_ROWS, chunk), blocks)


def _is_row(c, shape) -> jax.Array:
    """(8, C) mask of chunk c's row in its block of scales."""
    return lax.broadcasted_iota(jnp.int32, shape, 0) == c % SCALE_ROWS


def _row(block: jax.Array, c) -> jax.Array:
    """Chunk c's scales from an (8, C) block as a (1, C) row (a masked sum over the sublanes: no
    dynamic sublane index, which Mosaic supports less widely than whole-tile vector work)."""
    return jnp.sum(jnp.where(_is_row(c, block.shape), block, 0.0), axis=0, keepdims=True)


def _with_row(block: jax.Array, c, row: jax.Array) -> jax.Array:
    """The (8, C) block with chunk c's row replaced by `row` (1, C)."""
    return jnp.where(_is_row(c, block.shape), jnp.broadcast_to(row, block.shape), block)


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
    c, g = pl.program_id(3), pl.program_id(4)  # chunk, query head in the group

    @pl.when(c == 0)
    def _():
        s_ref[g] = s0_ref[g]

    q, k, v = q_ref[...], k_ref[...], v_ref[...]  # (C, Dk), (C, Dk), (C, BV)
    kt = (k.astype(_F32) * _column(_row(w_ref[g], c))).astype(k.dtype)  # K~_c: (C, Dk)
    a = _causal(_mm(q, kt, _NT, precision))  # (C, C)
    s = s_ref[g]  # S_c: (Dk, BV) float32
    out = _mm(q, s.astype(q.dtype), _NN, precision) + _mm(a.astype(v.dtype), v, _NN, precision)
    o_ref[...] = out.astype(o_ref.dtype)
    s_ref[g] = s + _mm(kt, v, _TN, precision)  # S_{c+1}

    @pl.when(c == pl.num_programs(3) - 1)
    def _():
        s_out_ref[g] = s_ref[g]


def forward(q, k, v, w, s0, plan: TpuPlan, interpret: bool):
    """out (B, Tp, H*Dvp) in q.dtype, S_T (B, H, Dkp, Dvp) float32."""
    b, tp, h, dkp, dvp = q.shape[0], q.shape[1], s0.shape[1], s0.shape[2], s0.shape[3]
    c, g, bv = plan.chunk, plan.group, plan.block_v
    nv = dvp // bv
    return pl.pallas_call(
        functools.partial(_forward_kernel, precision=plan.precision),
        grid=(b, h // g, nv, plan.n_chunks, g),
        in_specs=[
            pl.BlockSpec((None, c, dkp), lambda i, j, n, t, e: (i, t, j * g + e)),
            pl.BlockSpec((None, c, dkp), lambda i, j, n, t, e: (i, t, j)),
            pl.BlockSpec((None, c, bv), lambda i, j, n, t, e: (i, t, j * nv + n)),
            _scale_spec(g, c, lambda i, j, n, t, e: (i, j, t)),
            pl.BlockSpec((None, g, dkp, bv), lambda i, j, n, t, e: (i, j, 0, n)),
        ],
        out_specs=[
            pl.BlockSpec((None, c, bv), lambda i, j, n, t, e: (i, t, (j * g + e) * nv + n)),
            pl.BlockSpec((None, g, dkp, bv), lambda i, j, n, t, e: (i, j, 0, n)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, tp, h * dvp), q.dtype),
            jax.ShapeDtypeStruct((b, h, dkp, dvp), _F32),
        ],
        scratch_shapes=[pltpu.VMEM((g, dkp, bv), _F32)],
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=_interpret(interpret),
        name="cosine_attn_tpu_forward",
    )(q, k, v, w, s0)


# ----------------------------------------------------------------------------- dq


def _dq_kernel(k_ref, v_ref, w_ref, do_ref, s0_ref, dq_ref, s_ref, *, precision):
    c, g = pl.program_id(3), pl.program_id(4)

    @pl.when(c == 0)
    def _():
        s_ref[g] = s0_ref[g]

    k, v, do = k_ref[...], v_ref[...], do_ref[...]  # (C, BK), (C, Dv), (C, Dv)
    kt = (k.astype(_F32) * _column(_row(w_ref[g], c))).astype(k.dtype)  # K~_c[:, k-block]
    p = _causal(_mm(do, v, _NT, precision))  # (dO_c V_c^T) * M: (C, C)
    s = s_ref[g]  # S_c[k-block, :]: (BK, Dv)
    dq = _mm(do, s.astype(do.dtype), _NT, precision) + _mm(p.astype(kt.dtype), kt, _NN, precision)
    dq_ref[...] = dq.astype(dq_ref.dtype)
    s_ref[g] = s + _mm(kt, v, _TN, precision)


def backward_dq(k, v, w, do, s0, plan: TpuPlan, interpret: bool):
    """dq (B, Tp, H*Dkp) in k.dtype."""
    b, tp, h, dkp, dvp = k.shape[0], k.shape[1], s0.shape[1], s0.shape[2], s0.shape[3]
    c, g, bk = plan.chunk, plan.group, plan.block_k
    nk = dkp // bk
    return pl.pallas_call(
        functools.partial(_dq_kernel, precision=plan.precision),
        grid=(b, h // g, nk, plan.n_chunks, g),
        in_specs=[
            pl.BlockSpec((None, c, bk), lambda i, j, n, t, e: (i, t, j * nk + n)),
            pl.BlockSpec((None, c, dvp), lambda i, j, n, t, e: (i, t, j)),
            _scale_spec(g, c, lambda i, j, n, t, e: (i, j, t)),
            pl.BlockSpec((None, c, dvp), lambda i, j, n, t, e: (i, t, j * g + e)),
            pl.BlockSpec((None, g, bk, dvp), lambda i, j, n, t, e: (i, j, n, 0)),
        ],
        out_specs=pl.BlockSpec((None, c, bk), lambda i, j, n, t, e: (i, t, (j * g + e) * nk + n)),
        out_shape=jax.ShapeDtypeStruct((b, tp, h * dkp), k.dtype),
        scratch_shapes=[pltpu.VMEM((g, bk, dvp), _F32)],
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=_interpret(interpret),
        name="cosine_attn_tpu_dq",
    )(k, v, w, do, s0)


# ----------------------------------------------------------------------------- dk, dv


def _dkv_kernel(
    q_ref, k_ref, v_ref, w_ref, do_ref, ds_ref, dk_ref, dv_ref, dw_ref, ds0_ref, g_ref, dk_acc, dv_acc, *, precision
):
    c, g = pl.program_id(2), pl.program_id(3)  # step c visits chunk NC - 1 - c; g: query head in the group
    chunk = pl.num_programs(2) - 1 - c
    last_head = g == pl.num_programs(3) - 1

    @pl.when(c == 0)
    def _():
        g_ref[g] = ds_ref[g]  # G = dS_T

    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]  # (C, Dk), (C, Dk), (C, Dv), (C, Dv)
    w = _column(_row(w_ref[g], chunk))  # (C, 1) float32
    kt = (k.astype(_F32) * w).astype(k.dtype)  # K~_c
    a = _causal(_mm(q, kt, _NT, precision))  # (Q_c K~_c^T) * M
    p = _causal(_mm(do, v, _NT, precision))  # (dO_c V_c^T) * M
    grad = g_ref[g]  # G_c = dS_T + sum_{c' > c} Q_{c'}^T dO_{c'}: (Dk, Dv) float32
    dkt = _mm(v, grad.astype(v.dtype), _NT, precision) + _mm(p.astype(q.dtype), q, _TN, precision)  # dK~_c
    dv = _mm(kt, grad.astype(kt.dtype), _NN, precision) + _mm(a.astype(do.dtype), do, _TN, precision)
    dw_ref[g] = _with_row(dw_ref[g], chunk, _as_row(jnp.sum(dkt * k.astype(_F32), axis=1, keepdims=True)))
    g_ref[g] = grad + _mm(q, do, _TN, precision)

    @pl.when(g == 0)  # dk, dv of the kv head: summed over its group in float32, written once
    def _():
        dk_acc[...] = dkt * w
        dv_acc[...] = dv

    @pl.when(g > 0)
    def _():
        dk_acc[...] += dkt * w
        dv_acc[...] += dv

    @pl.when(last_head)
    def _():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)

    @pl.when(c == pl.num_programs(2) - 1)
    def _():
        ds0_ref[g] = g_ref[g]


def backward_dkv(q, k, v, w, do, d_final, plan: TpuPlan, interpret: bool):
    """dk (B, Tp, KV*Dkp) and dv (B, Tp, KV*Dvp) in the inputs' dtypes (summed over each group),
    d key_scale (B, H, NCp, C) float32 and dS0 (B, H, Dkp, Dvp) float32."""
    b, h, dkp, dvp = q.shape[0], d_final.shape[1], d_final.shape[2], d_final.shape[3]
    c, g, nc = plan.chunk, plan.group, plan.n_chunks

    def rev(t):
        return nc - 1 - t

    return pl.pallas_call(
        functools.partial(_dkv_kernel, precision=plan.precision),
        grid=(b, h // g, nc, g),
        in_specs=[
            pl.BlockSpec((None, c, dkp), lambda i, j, t, e: (i, rev(t), j * g + e)),
            pl.BlockSpec((None, c, dkp), lambda i, j, t, e: (i, rev(t), j)),
            pl.BlockSpec((None, c, dvp), lambda i, j, t, e: (i, rev(t), j)),
            _scale_spec(g, c, lambda i, j, t, e: (i, j, rev(t))),
            pl.BlockSpec((None, c, dvp), lambda i, j, t, e: (i, rev(t), j * g + e)),
            pl.BlockSpec((None, g, dkp, dvp), lambda i, j, t, e: (i, j, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, c, dkp), lambda i, j, t, e: (i, rev(t), j)),
            pl.BlockSpec((None, c, dvp), lambda i, j, t, e: (i, rev(t), j)),
            _scale_spec(g, c, lambda i, j, t, e: (i, j, rev(t))),
            pl.BlockSpec((None, g, dkp, dvp), lambda i, j, t, e: (i, j, 0, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(k.shape, k.dtype),
            jax.ShapeDtypeStruct(v.shape, v.dtype),
            jax.ShapeDtypeStruct(w.shape, _F32),
            jax.ShapeDtypeStruct((b, h, dkp, dvp), _F32),
        ],
        scratch_shapes=[
            pltpu.VMEM((g, dkp, dvp), _F32),  # G per query head
            pltpu.VMEM((c, dkp), _F32),  # dk of the chunk, summed over the group
            pltpu.VMEM((c, dvp), _F32),  # dv likewise
        ],
        compiler_params=_params("parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=_interpret(interpret),
        name="cosine_attn_tpu_dkv",
    )(q, k, v, w, do, d_final)
