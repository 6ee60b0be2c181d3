"""Sequence (context) parallel cosine attention: the sequence axis split over a mesh axis.

Causal cosine attention is a prefix sum of d x d states, so a device that holds
positions [r T_l, (r + 1) T_l) of every sequence (R devices on the axis) needs
only the states of the devices before it, never their keys or values:

  device r:  (o_r, S_r, n_r) = local causal attention of its shard from a zero state,
                               counts offset by N_<r (so the stabilizer sees global n_i)
  exchange:  N_<r = sum_{r' < r} n_r'          (B,) int32     all-gather of counts
             S_<r = sum_{r' < r} S_r'          (B, H, Dk, Dv) float32, "all_gather" or "scan"
  finish:    o_t += q^_t (S0 + S_<r)           ("query" stabilizer: times max(n_t, 1)^-p)
  final:     S_T = S0 + sum_r S_r, n_T = n0 + sum_r n_r (replicated)

Communication per call and device is O(R * B * H * Dk * Dv) bytes, independent of
the sequence length. The backward pass is the mirror image, by JAX's autodiff of
the collectives: the cotangent of S_<r, Q_r^T dO_r, flows back to the devices
before r (the transpose of the exchange: a reduce-scatter for "all_gather", the
reversed permutations for "scan"), i.e. each device receives the suffix sum of
Q^T dO of the devices after it; every residual stays on its device.

Exchanges of the d x d states:
  "all_gather": one all-gather of the R local states, then each device sums those
      before it; every device receives (R - 1) states; one collective, fewest
      round trips (the default: the states are small, so latency dominates).
  "scan": a Hillis-Steele prefix sum of collective permutes, ceil(log2 R) rounds
      of one state each (plus one all-reduce when the final state is returned):
      less volume for large R, more round trips.

Bidirectional: o = q^ (sum_r K_r^T V_r) max(n, 1)^-p with n = sum_r n_r: one
all-reduce (psum) of the (B, KV, Dk, Dv) state and the counts.

`sharded_cosine_attention` is the per-shard body for your own `shard_map`;
`sequence_parallel_cosine_attention` takes global arrays and a mesh (default:
the one set with `jax.set_mesh`), and is what `cosine_attention(...,
sequence_axis=...)` calls.
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from cottention_jax import _cosine_local as local
from cottention_jax._cosine_local import CosineAttentionState, Implementation, Stabilize
from cottention_jax._util import HIGHEST as _HI
from pallas_kernels.cosine_attn import reference as _ref

__all__ = ["EXCHANGES", "sequence_parallel_cosine_attention", "sharded_cosine_attention"]

Exchange = Literal["all_gather", "scan"]
EXCHANGES: tuple[str, ...] = get_args(Exchange)


def _before_and_total(x: jax.Array, axis: str, exchange: str, need_total: bool):
    """(sum of x over the devices before this one on `axis`, sum over all of them or None)."""
    size, rank = lax.axis_size(axis), lax.axis_index(axis)
    if exchange == "all_gather":
        xs = lax.all_gather(x, axis)  # (R, ...)
        earlier = (jnp.arange(size) < rank).reshape((size,) + (1,) * x.ndim)
        return jnp.sum(jnp.where(earlier, xs, jnp.zeros_like(xs)), axis=0), jnp.sum(xs, axis=0)
    inclusive, shift = x, 1
    while shift < size:  # after the round with this shift, device r holds sum_{r - 2 shift < r' <= r}
        inclusive = inclusive + lax.ppermute(inclusive, axis, [(i, i + shift) for i in range(size - shift)])
        shift *= 2
    return inclusive - x, (lax.psum(x, axis) if need_total else None)


def _check_exchange(exchange: str) -> None:
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}; got {exchange!r}")


def sharded_cosine_attention(
    q,
    k,
    v,
    stabilizer,
    *,
    axis_name: str,
    causal: bool,
    padding_mask=None,
    initial_state: CosineAttentionState | None = None,
    return_state: bool = False,
    stabilize: Stabilize = "value",
    implementation: Implementation | None = None,
    chunk_size: int | None = None,
    interpret: bool = False,
    exchange: Exchange = "all_gather",
):
    """Cosine attention of one sequence shard; call inside `shard_map` over `axis_name`.

    Arguments as `cottention_jax.cosine_attention`, for this device's shard:
    q (B, T_l, H, Dk), k (B, T_l, KV, Dk), v (B, T_l, KV, Dv), padding_mask
    (B, T_l); device r of the axis holds positions [r T_l, (r + 1) T_l).
    `initial_state` (the state before position 0) and the returned final state
    are the same on every device. Returns out (B, T_l, H, Dv)[, final state].
    """
    _check_exchange(exchange)
    if not causal:
        if initial_state is not None or return_state:
            raise ValueError("initial_state / return_state are only defined for causal=True attention")
        return _bidirectional_shard(q, k, v, stabilizer, padding_mask, axis_name)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    state0 = initial_state or local.init_cosine_attention_state(b, h, dk, dv)
    mask = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
    shard_count = jnp.sum(mask, axis=1, dtype=jnp.int32)  # (B,)
    count_before, count_total = _before_and_total(shard_count, axis_name, "all_gather", True)
    offset = state0.count.astype(jnp.int32) + count_before
    out, shard_state = local.cosine_attention_local(
        q,
        k,
        v,
        stabilizer,
        causal=True,
        padding_mask=padding_mask,
        initial_state=CosineAttentionState(jnp.zeros((b, h, dk, dv), jnp.float32), offset),
        return_state=True,
        stabilize=stabilize,
        implementation=implementation,
        chunk_size=chunk_size,
        interpret=interpret,
    )
    kv_before, kv_total = _before_and_total(shard_state.kv, axis_name, exchange, return_state)
    s_in = state0.kv.astype(jnp.float32) + kv_before  # (B, H, Dk, Dv)
    qn = jnp.where(mask[:, :, None, None], _ref.l2_normalize(q), 0.0)  # float32
    carried = jnp.einsum("bthd,bhde->bthe", qn, s_in, precision=_HI)  # q^_t S_in
    if stabilize == "query":
        counts = offset[:, None] + jnp.cumsum(mask.astype(jnp.int32), axis=1)  # global n_t
        carried = carried * _ref.count_scale(counts, stabilizer)[..., None]
    out = (out.astype(jnp.float32) + carried).astype(q.dtype)
    if not return_state:
        return out
    return out, CosineAttentionState(
        state0.kv.astype(jnp.float32) + kv_total, state0.count.astype(jnp.int32) + count_total
    )


def _bidirectional_shard(q, k, v, stabilizer, padding_mask, axis):
    """o = q^ (K^T V) max(n, 1)^-p with K^T V and n summed over the axis (one all-reduce)."""
    qn, kn, vz, mask = local.normalized_inputs(q, k, v, padding_mask)
    b, t, h, dk = q.shape
    n_kv = k.shape[2]
    kv = jnp.einsum("bskd,bske->bkde", kn, vz, precision=_HI, preferred_element_type=jnp.float32)
    kv, n = lax.psum((kv, jnp.sum(mask, axis=1, dtype=jnp.int32)), axis)
    scale = _ref.count_scale(n, stabilizer)  # (B, H)
    qg = qn.reshape(b, t, n_kv, h // n_kv, dk).astype(jnp.float32)
    out = jnp.einsum("btkgd,bkde->btkge", qg, kv, precision=_HI).reshape(b, t, h, -1)
    return (out * scale[:, None, :, None]).astype(q.dtype)


def sequence_parallel_cosine_attention(
    q,
    k,
    v,
    stabilizer,
    *,
    axis: str = "seq",
    mesh=None,
    batch_axes: str | tuple[str, ...] | None = "auto",
    causal: bool,
    padding_mask=None,
    initial_state=None,
    return_state: bool = False,
    stabilize: Stabilize = "value",
    implementation: Implementation | None = None,
    chunk_size: int | None = None,
    interpret: bool = False,
    exchange: Exchange = "all_gather",
):
    """`cosine_attention` on global arrays whose sequence axis is split over mesh axis `axis`.

    mesh: a `jax.sharding.Mesh` (Auto axes), default the context mesh (`jax.set_mesh`).
    batch_axes: mesh axes the batch is split over; "auto" = every other axis of the mesh.
    The sequence length must be divisible by the axis size. Other arguments as
    `cottention_jax.cosine_attention` (and `exchange`, see the module docstring).
    """
    local.check_inputs(
        q, k, v, stabilizer, causal, padding_mask, initial_state, return_state, stabilize, implementation
    )
    _check_exchange(exchange)
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh.empty or axis not in mesh.axis_names:
        raise ValueError(
            f"sequence axis {axis!r} is not an axis of the mesh "
            f"({'no mesh is set' if mesh.empty else f'axes {mesh.axis_names}'}); "
            "pass mesh= or enter one with jax.set_mesh(mesh)"
        )
    size = dict(mesh.shape)[axis]
    if q.shape[1] % size:
        raise ValueError(
            f"the sequence length ({q.shape[1]}) must be divisible by the {size} devices of "
            f"mesh axis {axis!r}; got q.shape={q.shape}"
        )
    if batch_axes == "auto":
        batch_axes = tuple(a for a in mesh.axis_names if a != axis) or None
    seq = P(batch_axes, axis)  # (B, T, ...) arrays
    # the state's specs: a CosineAttentionState of PartitionSpecs, mirroring its pytree
    state = CosineAttentionState(P(batch_axes), P(batch_axes))  # type: ignore[arg-type]
    b, _, h, dk = q.shape

    def body(q, k, v, stabilizer, mask, state0):
        return sharded_cosine_attention(
            q,
            k,
            v,
            stabilizer,
            axis_name=axis,
            causal=causal,
            padding_mask=mask,
            initial_state=state0,
            return_state=return_state,
            stabilize=stabilize,
            implementation=implementation,
            chunk_size=chunk_size,
            interpret=interpret,
            exchange=exchange,
        )

    if causal and initial_state is None:
        initial_state = local.init_cosine_attention_state(b, h, dk, v.shape[-1])
    out_specs = (seq, state) if return_state else seq
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(seq, seq, seq, P(), None if padding_mask is None else seq, None if initial_state is None else state),
        out_specs=out_specs,
        check_vma=False,
    )
    return fn(q, k, v, stabilizer, padding_mask, initial_state)
