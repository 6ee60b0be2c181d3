"""Causal linear attention as Pallas TPU (Mosaic) kernels: the chunked prefix scan with a custom_vjp.

Same arguments and results as `pallas.causal_linear_attention_pallas` (the GPU kernels) and
`reference.causal_linear_attention_reference` (the specification), per query head h and kv head
h // G:

  k~_i = key_scale_{i,h} k_i;   o_t = q_t (S0 + sum_{i<=t} k~_i v_i^T);   S_T = S0 + sum_i k~_i v_i^T

The algorithm and the three kernels are in `_tpu_kernels.py`: one forward kernel, and a
backward of two (dq in a forward sweep, dk and dv in a reverse sweep). Each keeps its d x d
state in a float32 VMEM scratch while its grid walks the chunks in order, so no per-chunk
state reaches HBM (the `xla` form writes and reads one per chunk); the custom_vjp saves the
inputs only and the backward recomputes each state once, in the sweep that needs it.

Precision: states and sums are float32 for every input dtype; bfloat16 / float16 inputs are
MXU operands as they are (the state and the C x C block rounded to the input dtype); float32
inputs use precision HIGHEST (full float32 products).

Padding (inside the wrapper): head dims to a multiple of 128 (the lane width; 64 -> 128,
192 -> 256), the sequence to a multiple of the chunk (padded keys get key_scale 0).

Launch: `TpuBlockSizes` (chunk, block_k, block_v). The default is the kernel table's
`"backend": "tpu"` entry for this TPU generation, dtype and padded head dim (see
`launch_table`); the shipped rows are reasoned from each generation's MXU width, not measured.
`implementation="pallas"` on a TPU backend runs these kernels; the default on TPUs stays "xla"
until a TPU measurement shows the kernels are faster (README, "TPU").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from pallas_kernels.cosine_attn import _tpu_kernels, launch_table
from pallas_kernels.cosine_attn._util import check_core_inputs, pad_to

__all__ = [
    "TpuBlockSizes",
    "TpuPlan",
    "causal_linear_attention_pallas_tpu",
    "tpu_launch_plan",
    "tpu_padded_head_dim",
]

TpuPlan = _tpu_kernels.TpuPlan

_F32 = jnp.float32
_LANES = 128  # a vector register's lanes on every TPU generation: head dims pad to a multiple of this


def tpu_padded_head_dim(d: int) -> int:
    """Head dims inside the TPU kernels: a multiple of 128 (64 -> 128, 192 -> 256)."""
    return -(-d // _LANES) * _LANES


@dataclasses.dataclass(frozen=True)
class TpuBlockSizes:
    """The TPU kernels' launch (static; hashable).

    chunk:    C, positions per chunk: a power of two >= 16 (the C x C block and the rows of
              every tile; the MXU's width, 128 or 256, fills it).
    block_k:  d_k columns per dq program, a multiple of 128 (clipped to the padded d_k).
    block_v:  d_v columns per forward program, a multiple of 128 (clipped to the padded d_v).
    Smaller blocks mean more programs (parallel grid points) and a smaller VMEM state, at the
    price of reading q and k (forward) or v and dO (dq) once per block.
    """

    chunk: int = 128
    block_k: int = 128
    block_v: int = 128

    def __post_init__(self):
        if not (isinstance(self.chunk, int) and self.chunk >= 16 and self.chunk & (self.chunk - 1) == 0):
            raise ValueError(f"TpuBlockSizes.chunk must be a power of two >= 16; got chunk={self.chunk!r}")
        for name in ("block_k", "block_v"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= _LANES and value % _LANES == 0):
                raise ValueError(f"TpuBlockSizes.{name} must be a multiple of {_LANES}; got {name}={value!r}")

    @classmethod
    def from_entry(cls, entry: dict) -> TpuBlockSizes:
        """From a `"backend": "tpu"` launch-table entry."""
        return cls(**{k: entry[k] for k in launch_table.TPU_FIELDS})

    def to_entry(self) -> dict:
        return {"backend": "tpu", **dataclasses.asdict(self)}

    @classmethod
    def fallback(cls, device_kind: str = "") -> TpuBlockSizes:
        """For a TPU with no table row: chunk and blocks of 128 (every generation's lane width;
        a whole MXU pass on v4 and v5, half of one on v6e and later)."""
        del device_kind
        return cls()

    @classmethod
    def get_default(
        cls, dtype: DTypeLike, head_dim_k: int, head_dim_v: int, device: jax.Device | None = None
    ) -> TpuBlockSizes:
        """The kernel table's TPU entry for `device` (default: JAX's first), dtype and padded head dim;
        else `fallback`."""
        device = device or jax.devices()[0]
        widest = max(tpu_padded_head_dim(head_dim_k), tpu_padded_head_dim(head_dim_v))
        entry = launch_table.find_entry(device.device_kind, None, jnp.dtype(dtype).name, widest, backend="tpu")
        return cls.fallback(device.device_kind) if entry is None else cls.from_entry(entry)


def tpu_launch_plan(
    q_shape: tuple[int, ...],
    k_shape: tuple[int, ...],
    v_shape: tuple[int, ...],
    dtype: DTypeLike,
    block_sizes: TpuBlockSizes | None = None,
) -> TpuPlan:
    """What the TPU kernels launch for these shapes (nothing is compiled or run); `block_sizes=None`
    resolves `TpuBlockSizes.get_default` for this device as the op does."""
    _, t, h, dk = q_shape
    dkp, dvp = tpu_padded_head_dim(dk), tpu_padded_head_dim(v_shape[-1])
    sizes = block_sizes or TpuBlockSizes.get_default(dtype, dk, v_shape[-1])
    block_k, block_v = min(sizes.block_k, dkp), min(sizes.block_v, dvp)
    if dkp % block_k or dvp % block_v:
        raise ValueError(
            f"block_sizes: block_k={sizes.block_k} and block_v={sizes.block_v} must divide the padded head dims "
            f"(d_k {dk} -> {dkp}, d_v {v_shape[-1]} -> {dvp})"
        )
    return TpuPlan(
        chunk=sizes.chunk,
        n_chunks=-(-t // sizes.chunk),
        group=h // k_shape[2],
        block_k=block_k,
        block_v=block_v,
        precision=lax.Precision.HIGHEST if jnp.dtype(dtype) == _F32 else None,
    )


# ----------------------------------------------------------------------------- layouts


def _lanes(x: jax.Array, tp: int) -> jax.Array:
    """(B, T, heads, D) -> (B, Tp, heads * Dp): head h is the h-th block of Dp lanes."""
    b, _, heads, d = x.shape
    dp = tpu_padded_head_dim(d)
    return pad_to(x, (b, tp, heads, dp)).reshape(b, tp, heads * dp)


def _unlanes(x: jax.Array, t: int, heads: int, d: int) -> jax.Array:
    """(B, Tp, heads * Dp) -> (B, T, heads, D)."""
    b, tp, _ = x.shape
    return x.reshape(b, tp, heads, -1)[:, :t, :, :d]


def _scale_rows(key_scale: jax.Array, plan: TpuPlan) -> jax.Array:
    """(B, T, H) -> (B, H, NCp, C) float32, row c = chunk c (lane-dense); padded positions 0.
    NCp is the chunk count rounded up to the kernels' 8-chunk blocks of scales."""
    b, _, h = key_scale.shape
    rows = -(-plan.n_chunks // _tpu_kernels.SCALE_ROWS) * _tpu_kernels.SCALE_ROWS
    w = jnp.swapaxes(key_scale.astype(_F32), 1, 2)
    return pad_to(w, (b, h, rows * plan.chunk)).reshape(b, h, rows, plan.chunk)


def _pad_state(s: jax.Array) -> jax.Array:
    """(B, H, Dk, Dv) -> (B, H, Dkp, Dvp) float32."""
    b, h, dk, dv = s.shape
    return pad_to(s.astype(_F32), (b, h, tpu_padded_head_dim(dk), tpu_padded_head_dim(dv)))


def _inputs(q, k, v, key_scale, plan: TpuPlan):
    tp = plan.n_chunks * plan.chunk
    return _lanes(q, tp), _lanes(k, tp), _lanes(v, tp), _scale_rows(key_scale, plan)


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
@functools.partial(jax.jit, static_argnums=(5, 6))
def _linear_attention(q, k, v, key_scale, initial_state, plan, interpret):
    t, h, dk, dv = q.shape[1], q.shape[2], q.shape[3], v.shape[3]
    qp, kp, vp, w = _inputs(q, k, v, key_scale, plan)
    out, s_out = _tpu_kernels.forward(qp, kp, vp, w, _pad_state(initial_state), plan, interpret)
    return _unlanes(out, t, h, dv), s_out[:, :, :dk, :dv]


def _linear_attention_fwd(q, k, v, key_scale, initial_state, plan, interpret):
    outputs = _linear_attention(q, k, v, key_scale, initial_state, plan, interpret)
    return outputs, (q, k, v, key_scale, initial_state)  # residuals: the inputs only


@functools.partial(jax.jit, static_argnums=(0, 1))
def _linear_attention_bwd(plan, interpret, residuals, cotangents):
    q, k, v, key_scale, initial_state = residuals
    d_out, d_final = cotangents
    t, h, dk, dv = q.shape[1], q.shape[2], q.shape[3], v.shape[3]
    qp, kp, vp, w = _inputs(q, k, v, key_scale, plan)
    do = _lanes(d_out.astype(q.dtype), qp.shape[1])
    dq = _tpu_kernels.backward_dq(kp, vp, w, do, _pad_state(initial_state), plan, interpret)
    dk_kv, dv_kv, dw, ds0 = _tpu_kernels.backward_dkv(qp, kp, vp, w, do, _pad_state(d_final), plan, interpret)
    n_kv = k.shape[2]
    dk_grad, dv_grad = _unlanes(dk_kv, t, n_kv, dk), _unlanes(dv_kv, t, n_kv, dv)
    d_scale = jnp.swapaxes(dw.reshape(dw.shape[0], h, -1)[:, :, :t], 1, 2).astype(key_scale.dtype)
    return _unlanes(dq, t, h, dk), dk_grad, dv_grad, d_scale, ds0[:, :, :dk, :dv].astype(initial_state.dtype)


_linear_attention.defvjp(_linear_attention_fwd, _linear_attention_bwd)


# ----------------------------------------------------------------------------- public function


def causal_linear_attention_pallas_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_scale: jax.Array,
    initial_state: jax.Array,
    *,
    interpret: bool = False,
    block_sizes: TpuBlockSizes | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Causal linear attention with per-(position, query head) key scales, as Pallas TPU kernels.

    Args:
      q: (B, T, H, Dk) queries (already normalised; padded positions zero).
      k: (B, T, KV, Dk) keys, v: (B, T, KV, Dv) values; H % KV == 0 (GQA: query head h reads
        kv head h // (H // KV) through the kernels' block index; k and v are never copied per head).
        One dtype for q, k, v: bfloat16, float16 or float32.
      key_scale: (B, T, H) float32, the factor on k_i for query head h.
      initial_state: (B, H, Dk, Dv) float32, S0.
      interpret: run the kernels in Pallas's TPU interpret mode (`pltpu.InterpretParams()`:
        TPU memory spaces and grid order simulated on the CPU; for tests).
      block_sizes: a `TpuBlockSizes`; None uses `TpuBlockSizes.get_default` (the table's TPU entry
        for this device, dtype and padded head dim, else the fallback).

    Returns:
      (out (B, T, H, Dv) in q.dtype, final state S_T (B, H, Dk, Dv) float32).
      Differentiable in q, k, v, key_scale and initial_state.
    """
    check_core_inputs(q, k, v, key_scale, initial_state)
    if block_sizes is not None and not isinstance(block_sizes, TpuBlockSizes):
        raise ValueError(f"block_sizes must be a TpuBlockSizes or None; got {type(block_sizes).__name__}")
    plan = tpu_launch_plan(q.shape, k.shape, v.shape, q.dtype, block_sizes)
    return _linear_attention(q, k, v, key_scale, initial_state, plan, bool(interpret))
