"""The Pallas (Triton GPU) kernels behind `pallas.causal_linear_attention_pallas`.

Every kernel walks the chunks of one sequence segment with a `lax.fori_loop`
and carries one d x d state block in float32 registers; grid programs never
share state, so they may run in any order (interpret mode runs them in
sequence, a GPU at once). Grid of every kernel: (head-dim block, batch,
query head, segment). The head-dim block comes first so that it varies
fastest in the launch order (Pallas folds the leading grid axes into CUDA's x
axis, first axis fastest): the programs that read the same q / k / v rows for
different blocks run side by side and share those reads through L2.
Conventions, per program:

  refs cover the whole padded sequence Tp of one (batch, head); `_rows(c)`
  selects chunk c (C rows). `w` is key_scale for the head, (Tp,) float32.
  q, k: (Tp, Dk) or a (Tp, BK) column block; v, do: (Tp, Dv) or (Tp, BV).
  M is the in-chunk causal mask (row t sees columns s <= t).

All shapes inside the kernels are powers of two (the Triton lowering needs
that); `pallas.py` pads the head dims and the sequence before calling.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

# The Triton compiler parameters are `jax.experimental.pallas.triton.CompilerParams` in every
# jax this project supports (checked in 0.10.2 and 0.12); passing them explicitly is what
# selects the Triton backend (jax 0.10 / 0.11 would otherwise pick Mosaic GPU).
from jax.experimental.pallas.triton import CompilerParams as _TritonParams

_F32 = jnp.float32
_SQ = pl.squeezed  # a block dimension of size 1 that the kernel does not see


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static facts the kernels of one pass (forward or backward) need; hashable.

    Every size here is a power of two except the counts. forward / dq / dk / dv
    are `pallas.KernelLaunch`es (block, num_warps, num_stages), their blocks
    already clipped to the padded head dims.
    """

    chunk: int  # C, positions per chunk
    n_chunks: int  # Tp / C
    chunks_per_segment: int  # chunks walked by one program
    n_segments: int  # ceil(n_chunks / chunks_per_segment)
    group: int  # query heads per kv head (GQA)
    forward: Any  # BV = forward.block, d_v columns per forward program
    dq: Any  # BK = dq.block, d_k columns per dQ program
    dk: Any  # BK = dk.block, d_k columns per dK~ program
    dv: Any  # BV = dv.block, d_v columns per dV program
    precision: lax.Precision | None  # HIGHEST for float32 inputs (IEEE dots), else None


def compiler_params(launch: Any) -> _TritonParams:
    """Explicit Triton parameters: this is also what routes the call to the Triton backend."""
    return _TritonParams(num_warps=launch.num_warps, num_stages=launch.num_stages)


# ----------------------------------------------------------------------------- in-kernel helpers


def _dot(a, b, precision):
    """a @ b with float32 accumulation: (M, K) x (K, N) -> (M, N)."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=_F32)


def _dot_nt(a, b, precision):
    """a @ b^T: (M, K) x (N, K) -> (M, N)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=_F32)


def _dot_tn(a, b, precision):
    """a^T @ b: (K, M) x (K, N) -> (M, N)."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision, preferred_element_type=_F32)


def _causal_mask(chunk: int) -> jax.Array:
    """M: (C, C) bool, True where column s <= row t."""
    t = jnp.arange(chunk, dtype=jnp.int32)
    return t[:, None] >= t[None, :]


def _rows(c, chunk: int):
    return pl.ds(pl.multiple_of(c * chunk, chunk), chunk)


def _segment_bounds(plan: Plan):
    """[first, end) chunk indices of this program's segment (grid axis 3)."""
    first = pl.program_id(3) * plan.chunks_per_segment
    return first, jnp.minimum(first + plan.chunks_per_segment, plan.n_chunks)


# ----------------------------------------------------------------------------- kernels


def _forward_kernel(q_ref, k_ref, v_ref, w_ref, s_in_ref, o_ref, s_out_ref, *, plan: Plan):
    """q, k (Tp, Dk); v (Tp, BV); s_in (Dk, BV) = S at segment start -> o (Tp, BV), s_out = S at end."""
    dtype, prec, chunk = q_ref.dtype, plan.precision, plan.chunk
    mask = _causal_mask(chunk)

    def step(c, state):  # state = S_c[:, block] (Dk, BV) float32
        rows = _rows(c, chunk)
        q, k, v, w = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], w_ref[rows]
        scores = jnp.where(mask, _dot_nt(q, k, prec) * w[None, :], 0.0)  # (Q K~^T) * M
        out = _dot(q, state.astype(dtype), prec) + _dot(scores.astype(dtype), v, prec)
        o_ref[rows, :] = out.astype(o_ref.dtype)  # O_c = Q_c S_c + ((Q K~^T) * M) V_c
        k_scaled = (k.astype(_F32) * w[:, None]).astype(dtype)
        return state + _dot_tn(k_scaled, v, prec)  # S_{c+1} = S_c + K~_c^T V_c

    first, end = _segment_bounds(plan)
    s_out_ref[...] = lax.fori_loop(first, end, step, s_in_ref[...].astype(_F32))


def _dq_kernel(k_ref, v_ref, w_ref, do_ref, h_in_ref, dq_ref, *, plan: Plan):
    """k (Tp, BK); v, do (Tp, Dv); h_in (BK, Dv) = S at segment start -> dq (Tp, BK)."""
    dtype, prec, chunk = k_ref.dtype, plan.precision, plan.chunk
    mask = _causal_mask(chunk)

    def step(c, state):  # state = H_c[block, :] (BK, Dv)
        rows = _rows(c, chunk)
        k, v, w, do = k_ref[rows, :], v_ref[rows, :], w_ref[rows], do_ref[rows, :]
        dp = jnp.where(mask, _dot_nt(do, v, prec) * w[None, :], 0.0)  # (dO V^T) * M * w
        dq = _dot_nt(do, state.astype(dtype), prec) + _dot(dp.astype(dtype), k, prec)
        dq_ref[rows, :] = dq.astype(dq_ref.dtype)  # dQ_c = dO_c H_c^T + (...) K~_c
        k_scaled = (k.astype(_F32) * w[:, None]).astype(dtype)
        return state + _dot_tn(k_scaled, v, prec)

    first, end = _segment_bounds(plan)
    lax.fori_loop(first, end, step, h_in_ref[...].astype(_F32))


def _dk_kernel(q_ref, k_ref, v_ref, w_ref, do_ref, g_in_ref, dk_ref, dw_ref, *, plan: Plan):
    """Reverse sweep. q, k (Tp, BK); v, do (Tp, Dv); g_in (BK, Dv) = G at segment end.

    -> dk (Tp, BK) = w * dK~ (this query head's share of dk), dw (Tp,) = <dK~, k> over this block.
    """
    dtype, prec, chunk = q_ref.dtype, plan.precision, plan.chunk
    mask = _causal_mask(chunk)
    first, end = _segment_bounds(plan)

    def step(i, g):  # g = G_c[block, :] (BK, Dv)
        rows = _rows(end - 1 - i, chunk)
        q, k, v, w, do = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], w_ref[rows], do_ref[rows, :]
        dp = jnp.where(mask, _dot_nt(do, v, prec), 0.0)  # (dO V^T) * M: (C_t, C_s)
        dk_tilde = _dot_nt(v, g.astype(dtype), prec) + _dot_tn(dp.astype(dtype), q, prec)
        dk_ref[rows, :] = (dk_tilde * w[:, None]).astype(dk_ref.dtype)
        dw_ref[rows] = jnp.sum(dk_tilde * k.astype(_F32), axis=1)
        return g + _dot_tn(q, do, prec)  # G_{c-1} = G_c + Q_c^T dO_c

    lax.fori_loop(0, end - first, step, g_in_ref[...].astype(_F32))


def _dv_kernel(q_ref, k_ref, w_ref, do_ref, g_in_ref, dv_ref, g_out_ref, *, plan: Plan):
    """Reverse sweep. q, k (Tp, Dk); do (Tp, BV); g_in (Dk, BV) = G at segment end.

    -> dv (Tp, BV) = this query head's dV, g_out (Dk, BV) = G at segment start.
    """
    dtype, prec, chunk = q_ref.dtype, plan.precision, plan.chunk
    mask = _causal_mask(chunk)
    first, end = _segment_bounds(plan)

    def step(i, g):  # g = G_c[:, block] (Dk, BV)
        rows = _rows(end - 1 - i, chunk)
        q, k, w, do = q_ref[rows, :], k_ref[rows, :], w_ref[rows], do_ref[rows, :]
        scores = jnp.where(mask, _dot_nt(q, k, prec), 0.0)  # (Q K^T) * M, unscaled
        dv = _dot(k, g.astype(dtype), prec) + _dot_tn(scores.astype(dtype), do, prec)
        dv_ref[rows, :] = (dv * w[:, None]).astype(dv_ref.dtype)  # dV = K~ G + (..)^T dO
        return g + _dot_tn(q, do, prec)

    g_out_ref[...] = lax.fori_loop(0, end - first, step, g_in_ref[...].astype(_F32))


def _segment_sum_kernel(x_ref, y_ref, *refs, plan: Plan, scaled: bool):
    """x (Tp, Dk), y (Tp, BV)[, w (Tp,)] -> out (Dk, BV) = sum over the segment of (w x)^T y."""
    w_ref, out_ref = refs if scaled else (None, refs[0])
    dtype, prec, chunk = x_ref.dtype, plan.precision, plan.chunk

    def step(c, acc):
        rows = _rows(c, chunk)
        x = x_ref[rows, :]
        if scaled:
            x = (x.astype(_F32) * w_ref[rows][:, None]).astype(dtype)
        return acc + _dot_tn(x, y_ref[rows, :], prec)

    first, end = _segment_bounds(plan)
    out_ref[...] = lax.fori_loop(first, end, step, jnp.zeros(out_ref.shape, _F32))


# ----------------------------------------------------------------------------- block specs


def _seq_spec(tp: int, width: int, head_of, blocked: bool) -> pl.BlockSpec:
    """A (Tp, width) window of a (B, Tp, heads, D) array; grid (j, b, h, s)."""
    if blocked:
        return pl.BlockSpec((_SQ, tp, _SQ, width), lambda j, b, h, s: (b, 0, head_of(h), j))
    return pl.BlockSpec((_SQ, tp, _SQ, width), lambda j, b, h, s: (b, 0, head_of(h), 0))


def _scale_spec(tp: int) -> pl.BlockSpec:
    """key_scale, transposed to (B, H, Tp)."""
    return pl.BlockSpec((_SQ, _SQ, tp), lambda j, b, h, s: (b, h, 0))


def _state_spec(rows: int, cols: int, block_rows: bool) -> pl.BlockSpec:
    """A (rows, cols) block of a (B, H, n_segments, Dk, Dv) state array, by segment."""
    if block_rows:
        return pl.BlockSpec((_SQ, _SQ, _SQ, rows, cols), lambda j, b, h, s: (b, h, s, j, 0))
    return pl.BlockSpec((_SQ, _SQ, _SQ, rows, cols), lambda j, b, h, s: (b, h, s, 0, j))


def _own_head(h):
    return h


def _kv_head(group: int):
    return lambda h: h // group


def _call(kernel, plan: Plan, launch, name: str, grid, in_specs, out_specs, out_shape, interpret: bool):
    return pl.pallas_call(
        functools.partial(kernel, plan=plan),
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=compiler_params(launch),
        interpret=interpret,
        name=name,
    )


# ----------------------------------------------------------------------------- pallas calls


def forward(
    q: jax.Array, k: jax.Array, v: jax.Array, w: jax.Array, s_in: jax.Array, plan: Plan, interpret: bool
) -> tuple[jax.Array, jax.Array]:
    """q (B,Tp,H,Dk), k (B,Tp,KV,Dk), v (B,Tp,KV,Dv), w (B,H,Tp), s_in (B,H,NS,Dk,Dv) float32.

    Returns o (B,Tp,H,Dv) in q.dtype and s_out (B,H,NS,Dk,Dv) float32, the state at each segment end.
    """
    b, tp, h, dk = q.shape
    dv = v.shape[-1]
    bv = plan.forward.block
    kv_head = _kv_head(plan.group)
    return _call(
        _forward_kernel,
        plan,
        plan.forward,
        "cosine_linear_attention_fwd",
        grid=(dv // bv, b, h, plan.n_segments),
        in_specs=[
            _seq_spec(tp, dk, _own_head, False),
            _seq_spec(tp, dk, kv_head, False),
            _seq_spec(tp, bv, kv_head, True),
            _scale_spec(tp),
            _state_spec(dk, bv, False),
        ],
        out_specs=[_seq_spec(tp, bv, _own_head, True), _state_spec(dk, bv, False)],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, dv), q.dtype), jax.ShapeDtypeStruct(s_in.shape, _F32)],
        interpret=interpret,
    )(q, k, v, w, s_in)


def backward_dq(
    k: jax.Array, v: jax.Array, w: jax.Array, do: jax.Array, h_in: jax.Array, plan: Plan, interpret: bool
) -> jax.Array:
    """k (B,Tp,KV,Dk), v (B,Tp,KV,Dv), w (B,H,Tp), do (B,Tp,H,Dv), h_in (B,H,NS,Dk,Dv) -> dq (B,Tp,H,Dk)."""
    b, tp, h, dv = do.shape
    dk = k.shape[-1]
    bk = plan.dq.block
    kv_head = _kv_head(plan.group)
    return _call(
        _dq_kernel,
        plan,
        plan.dq,
        "cosine_linear_attention_dq",
        grid=(dk // bk, b, h, plan.n_segments),
        in_specs=[
            _seq_spec(tp, bk, kv_head, True),
            _seq_spec(tp, dv, kv_head, False),
            _scale_spec(tp),
            _seq_spec(tp, dv, _own_head, False),
            _state_spec(bk, dv, True),
        ],
        out_specs=_seq_spec(tp, bk, _own_head, True),
        out_shape=jax.ShapeDtypeStruct((b, tp, h, dk), do.dtype),
        interpret=interpret,
    )(k, v, w, do, h_in)


def backward_dk(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    w: jax.Array,
    do: jax.Array,
    g_in: jax.Array,
    dk_dtype: Any,
    plan: Plan,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:
    """-> dk_per_head (B,Tp,H,Dk) = w dK~ in dk_dtype, dw_parts (B,H,Dk/BK,Tp) float32."""
    b, tp, h, dk = q.shape
    dv = v.shape[-1]
    bk = plan.dk.block
    kv_head = _kv_head(plan.group)
    dw_spec = pl.BlockSpec((_SQ, _SQ, _SQ, tp), lambda j, b_, h_, s: (b_, h_, j, 0))
    return _call(
        _dk_kernel,
        plan,
        plan.dk,
        "cosine_linear_attention_dk",
        grid=(dk // bk, b, h, plan.n_segments),
        in_specs=[
            _seq_spec(tp, bk, _own_head, True),
            _seq_spec(tp, bk, kv_head, True),
            _seq_spec(tp, dv, kv_head, False),
            _scale_spec(tp),
            _seq_spec(tp, dv, _own_head, False),
            _state_spec(bk, dv, True),
        ],
        out_specs=[_seq_spec(tp, bk, _own_head, True), dw_spec],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, dk), dk_dtype), jax.ShapeDtypeStruct((b, h, dk // bk, tp), _F32)],
        interpret=interpret,
    )(q, k, v, w, do, g_in)


def backward_dv(
    q: jax.Array, k: jax.Array, w: jax.Array, do: jax.Array, g_in: jax.Array, dv_dtype: Any, plan: Plan, interpret: bool
) -> tuple[jax.Array, jax.Array]:
    """-> dv_per_head (B,Tp,H,Dv) in dv_dtype, g_out (B,H,NS,Dk,Dv) float32 = G at segment start."""
    b, tp, h, dk = q.shape
    dv = do.shape[-1]
    bv = plan.dv.block
    kv_head = _kv_head(plan.group)
    return _call(
        _dv_kernel,
        plan,
        plan.dv,
        "cosine_linear_attention_dv",
        grid=(dv // bv, b, h, plan.n_segments),
        in_specs=[
            _seq_spec(tp, dk, _own_head, False),
            _seq_spec(tp, dk, kv_head, False),
            _scale_spec(tp),
            _seq_spec(tp, bv, _own_head, True),
            _state_spec(dk, bv, False),
        ],
        out_specs=[_seq_spec(tp, bv, _own_head, True), _state_spec(dk, bv, False)],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, dv), dv_dtype), jax.ShapeDtypeStruct(g_in.shape, _F32)],
        interpret=interpret,
    )(q, k, w, do, g_in)


def segment_sums(
    x: jax.Array,
    y: jax.Array,
    w: jax.Array,
    heads: int,
    x_group: int,
    y_group: int,
    plan: Plan,
    launch: Any,
    interpret: bool,
) -> jax.Array:
    """Per-segment sum_i (w_i x_i)^T y_i for every query head: -> (B, heads, NS, Dk, Dv) float32.

    x (B,Tp,X,Dk) is read at head h // x_group, y (B,Tp,Y,Dv) at h // y_group;
    w (B,heads,Tp) or None (no scaling). Launched with `launch` (blocks of d_v),
    the parameters of the kernel these sums feed.
    """
    b, tp, _, dk = x.shape
    dv = y.shape[-1]
    bv = launch.block
    in_specs = [_seq_spec(tp, dk, _kv_head(x_group), False), _seq_spec(tp, bv, _kv_head(y_group), True)]
    args = [x, y]
    if w is not None:
        in_specs.append(_scale_spec(tp))
        args.append(w)
    kernel = functools.partial(_segment_sum_kernel, scaled=w is not None)
    return _call(
        kernel,
        plan,
        launch,
        "cosine_linear_attention_segment_sums",
        grid=(dv // bv, b, heads, plan.n_segments),
        in_specs=in_specs,
        out_specs=_state_spec(dk, bv, False),
        out_shape=jax.ShapeDtypeStruct((b, heads, plan.n_segments, dk, dv), _F32),
        interpret=interpret,
    )(*args)
