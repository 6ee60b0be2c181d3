"""Causal linear attention as Pallas GPU (Triton) kernels: chunked prefix scan with a custom_vjp.

Computes the core of `reference.causal_linear_attention_reference`, per query
head h and kv head h // G:

  k~_i = key_scale_{i,h} k_i;   o_t = q_t (S0 + sum_{i<=t} k~_i v_i^T);   S_T = S0 + sum_i k~_i v_i^T

with the chunked algorithm of `xla.py` (chunk size C, in-chunk causal mask M):

  forward   O_c = Q_c S_c + ((Q_c K~_c^T) * M) V_c,   S_{c+1} = S_c + K~_c^T V_c
  backward  forward sweep (recomputes S_c):  dQ_c = dO_c S_c^T + ((dO_c V_c^T) * M) K~_c
            reverse sweep, G_c = dS_T + sum_{c' > c} Q_{c'}^T dO_{c'}:
              dK~_c = V_c G_c^T + ((dO_c V_c^T) * M)^T Q_c
              dV_c  = K~_c G_c + ((Q_c K~_c^T) * M)^T dO_c
            dk = sum_{h in group} key_scale dK~,  d key_scale = <dK~, k>,
            dv = sum_{h in group} dV,  d S0 = G_{-1}.

Work split (see benchmarks/NOTES.md for the reasoning and the byte/FLOP counts):
  forward  grid (Dv/BV, B, H, segments): each program owns S[:, v-block] (Dk, BV);
  dQ       grid (Dk/BK, B, H, segments): S[k-block, :] (BK, Dv);
  dK~      grid (Dk/BK, B, H, segments): G[k-block, :] (BK, Dv), reverse order;
  dV       grid (Dv/BV, B, H, segments): G[:, v-block] (Dk, BV), reverse order.
Each program walks its chunks with a fori_loop and keeps its state block in
float32 registers; the C x C block is recomputed where a program needs it.
With segments > 1 the sequence is cut into that many pieces that run in
parallel; a small kernel first sums K~^T V (or Q^T dO) per segment, and XLA
turns those sums into each segment's starting state. Only the inputs are kept
for the backward pass; no per-position or per-chunk d x d state is stored.

Precision: states and accumulators are float32 for every input dtype. bf16 and
fp16 inputs use tensor-core dots with float32 accumulation (the state and the
C x C block are rounded to the input dtype as dot operands); float32 inputs use
IEEE float32 dots (precision HIGHEST), never TF32.

Padding (inside the wrapper): the sequence to a multiple of C (padded keys get
key_scale 0), head dims to a power of two >= 16 (the Triton lowering needs
power-of-two shapes), e.g. 96 -> 128.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from pallas_kernels.cosine_attn import _kernels, launch_table
from pallas_kernels.cosine_attn._util import check_core_inputs, exclusive_cumsum, pad_to

__all__ = [
    "BlockSizes",
    "KernelLaunch",
    "LaunchPlan",
    "causal_linear_attention_pallas",
    "launch_plan",
    "padded_head_dim",
]

LaunchPlan = _kernels.Plan  # the resolved static launch of one pass (`launch_plan`)

_F32 = jnp.float32
_MIN_PROGRAMS = 132  # one program per SM of an H100; fewer leaves SMs idle
_MIN_CHUNKS_PER_SEGMENT = 16  # below this the per-segment start-up is not worth it


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def padded_head_dim(d: int) -> int:
    """Head dims inside the kernels: a power of two, at least 16 (Triton's smallest dot)."""
    return max(16, 1 << (d - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """Launch parameters of one kernel (static; hashable).

    block:      head-dim columns per program: of d_v for the forward and dV
                kernels, of d_k for dQ and dK~ (clipped to the padded head dim).
    num_warps, num_stages: Triton's warps per program and software-pipeline stages.
    """

    block: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if not (_is_pow2(self.block) and self.block >= 16):
            raise ValueError(
                f"KernelLaunch.block must be a power of two >= 16 (Triton needs "
                f"power-of-two tiles); got block={self.block}"
            )
        if not (_is_pow2(self.num_warps) and self.num_warps <= 32):
            raise ValueError(f"KernelLaunch.num_warps must be a power of two <= 32; got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"KernelLaunch.num_stages must be >= 1; got {self.num_stages}")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes and launch parameters of the four kernels (static; hashable).

    chunk:      C, positions per chunk (C x C in-chunk block), shared by all kernels.
    forward, dq, dk, dv: a `KernelLaunch` per kernel; the best launch differs
                between them (see benchmarks/NOTES.md).
    segments:   sequence pieces run in parallel; None picks 1 unless a pass's grid
                would have fewer programs than an H100 has SMs (132), then
                doubles it while every segment keeps >= 16 chunks. Each extra
                segment costs one more read of k, v (and q, dO in the backward).

    `BlockSizes.uniform(...)` gives all four kernels one launch;
    `BlockSizes.get_default(dtype, dk, dv)` is the tuned table's entry for the
    current device (the default of `causal_linear_attention_pallas`).
    """

    chunk: int = 64
    forward: KernelLaunch = KernelLaunch()
    dq: KernelLaunch = KernelLaunch()
    dk: KernelLaunch = KernelLaunch()
    dv: KernelLaunch = KernelLaunch()
    segments: int | None = None

    def __post_init__(self):
        if not (_is_pow2(self.chunk) and self.chunk >= 16):
            raise ValueError(
                f"BlockSizes.chunk must be a power of two >= 16 (Triton needs "
                f"power-of-two tiles); got chunk={self.chunk}"
            )
        for name in launch_table.KERNELS:
            if not isinstance(getattr(self, name), KernelLaunch):
                raise ValueError(f"BlockSizes.{name} must be a KernelLaunch; got {getattr(self, name)!r}")
        if self.segments is not None and self.segments < 1:
            raise ValueError(f"BlockSizes.segments must be None or >= 1; got {self.segments}")

    @classmethod
    def uniform(
        cls, *, chunk: int = 64, block: int = 64, num_warps: int = 4, num_stages: int = 2, segments: int | None = None
    ) -> BlockSizes:
        """One launch for all four kernels."""
        launch = KernelLaunch(block, num_warps, num_stages)
        return cls(chunk, launch, launch, launch, launch, segments)

    @classmethod
    def from_entry(cls, entry: dict) -> BlockSizes:
        """From a launch-table entry (see `launch_table`)."""
        launches = {k: KernelLaunch(**entry[k]) for k in launch_table.KERNELS}
        return cls(chunk=entry["chunk"], segments=entry.get("segments"), **launches)

    def to_entry(self) -> dict:
        """The table fields of these sizes: chunk and one launch per kernel."""
        entry = {"chunk": self.chunk, **{k: dataclasses.asdict(getattr(self, k)) for k in launch_table.KERNELS}}
        return entry if self.segments is None else {**entry, "segments": self.segments}

    @classmethod
    def fallback(cls, dtype: DTypeLike, head_dim_k: int, head_dim_v: int) -> BlockSizes:
        """What devices without a tuned entry get; reasoned from the H100 sweep (benchmarks/NOTES.md).

        4 warps and 64-wide blocks for every kernel: on the H100 it was within 3% of the
        best fwd+bwd config at d = 128 and 20% at d = 64, and it never spills (2 warps
        with 64-wide blocks spilled registers: 55 ms instead of 1.4 ms). float32 inputs
        at d >= 256 use C = 32 to halve the operand tiles in shared memory.
        """
        widest = max(padded_head_dim(head_dim_k), padded_head_dim(head_dim_v))
        wide_f32 = jnp.dtype(dtype) == jnp.float32 and widest >= 256
        return cls.uniform(chunk=32 if wide_f32 else 64, block=64, num_warps=4, num_stages=2)

    @classmethod
    def get_default(
        cls,
        dtype: DTypeLike,
        head_dim_k: int,
        head_dim_v: int,
        device: jax.Device | None = None,
    ) -> BlockSizes:
        """The tuned entry for `device` (default: JAX's first device), dtype and padded head dim,
        from the tables of `launch_table` (yours first, then the shipped one); else `fallback`."""
        device = device or jax.devices()[0]
        widest = max(padded_head_dim(head_dim_k), padded_head_dim(head_dim_v))
        entry = launch_table.find_entry(
            device.device_kind, getattr(device, "compute_capability", None), jnp.dtype(dtype).name, widest
        )
        return cls.fallback(dtype, head_dim_k, head_dim_v) if entry is None else cls.from_entry(entry)


def _clip(launch: KernelLaunch, dim: int) -> KernelLaunch:
    return dataclasses.replace(launch, block=min(launch.block, dim))


def launch_plan(
    q_shape: tuple[int, ...],
    k_shape: tuple[int, ...],
    v_shape: tuple[int, ...],
    dtype: DTypeLike,
    block_sizes: BlockSizes | None = None,
    backward: bool = False,
) -> LaunchPlan:
    """What `causal_linear_attention_pallas` launches for these shapes: the forward pass's plan, or the
    backward pass's when `backward` (chunk, chunk and segment counts, each kernel's launch clipped
    to the padded head dims). Nothing is compiled or run; `block_sizes=None` resolves
    `BlockSizes.get_default` for this device as the op does.

    The two passes may have different segment counts: each pass's automatic count
    follows the fewest programs among its own kernels.
    """
    b, t, h, dk = q_shape
    dk_p, dv_p = padded_head_dim(dk), padded_head_dim(v_shape[-1])
    sizes = block_sizes or BlockSizes.get_default(dtype, dk, v_shape[-1])
    fwd, dq, dkl, dv = (_clip(sizes.forward, dv_p), _clip(sizes.dq, dk_p), _clip(sizes.dk, dk_p), _clip(sizes.dv, dv_p))
    n_chunks = -(-t // sizes.chunk)
    segments = sizes.segments
    if segments is None:  # double until the GPU has enough programs
        blocks = min(dk_p // dq.block, dk_p // dkl.block, dv_p // dv.block) if backward else dv_p // fwd.block
        segments, programs = 1, b * h * blocks
        while programs * segments < _MIN_PROGRAMS and n_chunks >= 2 * segments * _MIN_CHUNKS_PER_SEGMENT:
            segments *= 2
    per_segment = -(-n_chunks // min(segments, n_chunks))
    return _kernels.Plan(
        chunk=sizes.chunk,
        n_chunks=n_chunks,
        chunks_per_segment=per_segment,
        n_segments=-(-n_chunks // per_segment),
        group=h // k_shape[2],
        forward=fwd,
        dq=dq,
        dk=dkl,
        dv=dv,
        precision=lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None,
    )


# ----------------------------------------------------------------------------- padding


def _pad_seq(x: jax.Array, tp: int) -> jax.Array:
    """(B, T, heads, D) -> (B, Tp, heads, D_padded)."""
    b, _, heads, d = x.shape
    return pad_to(x, (b, tp, heads, padded_head_dim(d)))


def _pad_state(s: jax.Array) -> jax.Array:
    """(B, H, Dk, Dv) -> (B, H, Dk_padded, Dv_padded) float32."""
    b, h, dk, dv = s.shape
    return pad_to(s.astype(_F32), (b, h, padded_head_dim(dk), padded_head_dim(dv)))


def _padded_inputs(q, k, v, key_scale, plan: _kernels.Plan):
    tp = plan.n_chunks * plan.chunk
    w = pad_to(key_scale.astype(_F32), (q.shape[0], tp, q.shape[2]))
    return _pad_seq(q, tp), _pad_seq(k, tp), _pad_seq(v, tp), jnp.swapaxes(w, 1, 2)  # w (B, H, Tp)


# ----------------------------------------------------------------------------- segment states


def _segment_starts(k, v, w, s0, plan, launch, interpret):
    """S at the start of each segment: (B, H, NS, Dk, Dv) = S0 + K~^T V over earlier segments."""
    if plan.n_segments == 1:
        return s0[:, :, None]
    sums = _kernels.segment_sums(k, v, w, s0.shape[1], plan.group, plan.group, plan, launch, interpret)
    return s0[:, :, None] + exclusive_cumsum(sums, axis=2)


def _segment_ends(q, do, d_final, plan, interpret):
    """G at the end of each segment: (B, H, NS, Dk, Dv) = dS_T + Q^T dO over later segments."""
    if plan.n_segments == 1:
        return d_final[:, :, None]
    sums = _kernels.segment_sums(q, do, None, q.shape[2], 1, 1, plan, plan.dv, interpret)
    return d_final[:, :, None] + exclusive_cumsum(sums, axis=2, reverse=True)


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
@functools.partial(jax.jit, static_argnums=(5, 6))
def _linear_attention(q, k, v, key_scale, initial_state, plans, interpret):
    """plans = (forward Plan, backward Plan)."""
    plan = plans[0]
    t, dk, dv = q.shape[1], q.shape[-1], v.shape[-1]
    qp, kp, vp, w = _padded_inputs(q, k, v, key_scale, plan)
    s_in = _segment_starts(kp, vp, w, _pad_state(initial_state), plan, plan.forward, interpret)
    out, s_out = _kernels.forward(qp, kp, vp, w, s_in, plan, interpret)
    return out[:, :t, :, :dv], s_out[:, :, -1, :dk, :dv]


def _linear_attention_fwd(q, k, v, key_scale, initial_state, plans, interpret):
    outputs = _linear_attention(q, k, v, key_scale, initial_state, plans, interpret)
    return outputs, (q, k, v, key_scale, initial_state)  # residuals: the inputs only


def _sum_group(x: jax.Array, group: int) -> jax.Array:
    """(B, T, H, D) per query head -> (B, T, KV, D) summed over each kv head's group."""
    if group == 1:
        return x
    b, t, h, d = x.shape
    return jnp.sum(x.reshape(b, t, h // group, group, d), axis=3)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _linear_attention_bwd(plans, interpret, residuals, cotangents):
    plan = plans[1]
    q, k, v, key_scale, initial_state = residuals
    d_out, d_final = cotangents
    t, dk, dv = q.shape[1], q.shape[-1], v.shape[-1]
    qp, kp, vp, w = _padded_inputs(q, k, v, key_scale, plan)
    do = _pad_seq(d_out.astype(q.dtype), qp.shape[1])
    h_in = _segment_starts(kp, vp, w, _pad_state(initial_state), plan, plan.dv, interpret)
    g_in = _segment_ends(qp, do, _pad_state(d_final), plan, interpret)

    # Per-query-head dK and dV are summed over the group afterwards: float32 when G > 1.
    dk_dtype = k.dtype if plan.group == 1 else _F32
    dv_dtype = v.dtype if plan.group == 1 else _F32
    dq = _kernels.backward_dq(kp, vp, w, do, h_in, plan, interpret)
    dk_heads, dw_parts = _kernels.backward_dk(qp, kp, vp, w, do, g_in, dk_dtype, plan, interpret)
    dv_heads, g_out = _kernels.backward_dv(qp, kp, w, do, g_in, dv_dtype, plan, interpret)

    dk_grad = _sum_group(dk_heads, plan.group)[:, :t, :, :dk].astype(k.dtype)
    dv_grad = _sum_group(dv_heads, plan.group)[:, :t, :, :dv].astype(v.dtype)
    dw = jnp.swapaxes(jnp.sum(dw_parts, axis=2), 1, 2)[:, :t].astype(key_scale.dtype)
    ds0 = g_out[:, :, 0, :dk, :dv].astype(initial_state.dtype)
    return dq[:, :t, :, :dk], dk_grad, dv_grad, dw, ds0


_linear_attention.defvjp(_linear_attention_fwd, _linear_attention_bwd)


# ----------------------------------------------------------------------------- public function


def causal_linear_attention_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_scale: jax.Array,
    initial_state: jax.Array,
    *,
    interpret: bool = False,
    block_sizes: BlockSizes | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Causal linear attention with per-(position, query head) key scales, as Pallas kernels.

    Args:
      q: (B, T, H, Dk) queries (already normalised; padded positions zero).
      k: (B, T, KV, Dk) keys, v: (B, T, KV, Dv) values; H % KV == 0 (GQA: query
        head h reads kv head h // (H // KV); k and v are never copied per head).
        One dtype for q, k, v: bfloat16, float16 or float32.
      key_scale: (B, T, H) float32, the factor on k_i for query head h.
      initial_state: (B, H, Dk, Dv) float32, S0.
      interpret: run the kernels in Pallas interpret mode (CPU; for tests).
      block_sizes: a `BlockSizes`; None uses `BlockSizes.get_default` (the tuned
        table's entry for this device, dtype and head dim, else the fallback).

    Returns:
      (out (B, T, H, Dv) in q.dtype, final state S_T (B, H, Dk, Dv) float32).
      Differentiable in q, k, v, key_scale and initial_state.
    """
    check_core_inputs(q, k, v, key_scale, initial_state)
    sizes = block_sizes or BlockSizes.get_default(q.dtype, q.shape[-1], v.shape[-1])
    plans = tuple(launch_plan(q.shape, k.shape, v.shape, q.dtype, sizes, backward=b) for b in (False, True))
    return _linear_attention(q, k, v, key_scale, initial_state, plans, bool(interpret))
