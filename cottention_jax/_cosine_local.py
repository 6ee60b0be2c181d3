"""Cosine attention on one device: the input checks, the RNN state, the forms and the step.

`cosine_attention_local` is `ops.cosine_attention` without a sequence axis: it checks its inputs,
picks the implementation and runs it. Both `ops` (the public op, which dispatches a split
sequence to `parallel`) and `parallel` (which runs this op on each shard) build on this module,
so neither imports the other back; users import `ops` (or the package), which re-exports the
public names defined here. The mathematics and the forms are described in `ops`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np

from cottention_jax._util import HIGHEST as _HI
from cottention_jax._util import check_float as _check_float
from cottention_jax._util import check_qkv
from cottention_jax._util import shape_error as _shape_error
from pallas_kernels.cosine_attn import reference as _ref
from pallas_kernels.cosine_attn import xla as _xla

__all__ = [
    "CosineAttentionState",
    "IMPLEMENTATIONS",
    "STABILIZE_MODES",
    "Implementation",
    "Stabilize",
    "check_inputs",
    "cosine_attention_local",
    "cosine_attention_step",
    "default_implementation",
    "init_cosine_attention_state",
    "normalized_inputs",
    "pallas_platform",
]

Implementation = Literal["reference", "xla", "pallas"]
Stabilize = Literal["value", "query"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
STABILIZE_MODES: tuple[str, ...] = get_args(Stabilize)


class CosineAttentionState(NamedTuple):
    """The RNN state of causal cosine attention after some prefix.

    kv:    (B, H, Dk, Dv) float32. "value" mode: sum_i k^_i v_i^T max(n_i,1)^-p;
           "query" mode: sum_i k^_i v_i^T (the factor is applied on read).
    count: (B,) int32, real (unpadded) tokens seen so far.
    """

    kv: jax.Array
    count: jax.Array  # type: ignore[assignment]  # public field name; shadows tuple.count, unused here


def init_cosine_attention_state(batch: int, heads: int, dk: int, dv: int) -> CosineAttentionState:
    """An empty state: zeros, count 0."""
    return CosineAttentionState(jnp.zeros((batch, heads, dk, dv), jnp.float32), jnp.zeros((batch,), jnp.int32))


def default_implementation(causal: bool = True) -> Implementation:
    """ "pallas" for causal attention on a GPU, "xla" otherwise."""
    if causal and jax.default_backend() == "gpu":
        return "pallas"
    return "xla"


# ----------------------------------------------------------------------------- checks


def _check_arrays(**arrays) -> None:
    """jax or numpy arrays only: a list or a scalar has no shape to check against the others."""
    for name, a in arrays.items():
        if not isinstance(a, (jax.Array, np.ndarray)):
            raise ValueError(f"{name} must be a jax or numpy array; got {type(a).__name__}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool; got {value!r} ({type(value).__name__})")


def _check_chunk_size(chunk_size, impl: str) -> None:
    """None (the default) or a positive int; for the Pallas kernels a power of two >= 16."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be None (the default, {_xla.DEFAULT_CHUNK}) or an int >= 1; got {chunk_size!r}"
        )
    if impl == "pallas" and (chunk_size < 16 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size for implementation='pallas' must be a power of two >= 16; got {chunk_size}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _check_stabilizer(h: int, stabilizer, q) -> None:
    if jnp.shape(stabilizer) != (h,):
        raise _shape_error(f"stabilizer must have shape (heads,) = ({h},)", stabilizer=stabilizer, q=q)


def _check_state(state, b: int, h: int, dk: int, dv: int, name: str = "initial_state") -> None:
    if not isinstance(state, CosineAttentionState):
        raise ValueError(f"{name} must be a CosineAttentionState(kv, count); got {type(state).__name__}")
    if jnp.shape(state.kv) != (b, h, dk, dv):
        raise ValueError(
            f"{name}.kv must have shape (batch, heads, d_k, d_v) = {(b, h, dk, dv)}; "
            f"got {name}.kv.shape={tuple(jnp.shape(state.kv))}"
        )
    if jnp.shape(state.count) != (b,):
        raise ValueError(
            f"{name}.count must have shape (batch,) = ({b},); got {name}.count.shape={tuple(jnp.shape(state.count))}"
        )
    if not jnp.issubdtype(jnp.result_type(state.count), jnp.integer):
        raise ValueError(f"{name}.count must be an integer array; got dtype {jnp.result_type(state.count)}")
    if not isinstance(state.count, jax.core.Tracer):  # a traced count (under jit) has no value to check
        count = np.asarray(state.count)
        if np.any(count < 0):
            raise ValueError(f"{name}.count must be >= 0 (real tokens seen so far); got {name}.count={count.tolist()}")
    _check_float(**{f"{name}.kv": state.kv})


def check_inputs(
    q, k, v, stabilizer, causal, padding_mask, initial_state, return_state, stabilize, implementation
) -> None:
    _check_choice("stabilize", stabilize, STABILIZE_MODES)
    if implementation is not None:
        _check_choice("implementation", implementation, IMPLEMENTATIONS)
    _check_bool("causal", causal)
    _check_bool("return_state", return_state)
    _check_arrays(q=q, k=k, v=v, stabilizer=stabilizer)
    check_qkv(q, k, v, rank=4, nonempty=True)
    _check_float(stabilizer=stabilizer)
    (b, t, h, dk), dv = q.shape, v.shape[-1]
    _check_stabilizer(h, stabilizer, q)
    if padding_mask is not None:
        _check_arrays(padding_mask=padding_mask)
        if jnp.shape(padding_mask) != (b, t):
            raise _shape_error(f"padding_mask must have shape (batch, seq) = {(b, t)}", padding_mask=padding_mask)
        if jnp.result_type(padding_mask) != jnp.bool_:
            raise ValueError(
                f"padding_mask must be a bool array (True = real token); got dtype {jnp.result_type(padding_mask)}"
            )
    if not causal and initial_state is not None:
        raise ValueError("initial_state is only defined for causal=True attention; got causal=False")
    if not causal and return_state:
        raise ValueError("return_state is only defined for causal=True attention; got causal=False")
    if initial_state is not None:
        _check_state(initial_state, b, h, dk, dv)


# ----------------------------------------------------------------------------- the op on one device


def cosine_attention_local(
    q,
    k,
    v,
    stabilizer,
    *,
    causal: bool,
    padding_mask=None,
    initial_state: CosineAttentionState | None = None,
    return_state: bool = False,
    stabilize: Stabilize = "value",
    implementation: Implementation | None = None,
    chunk_size: int | None = None,
    interpret: bool = False,
):
    """`ops.cosine_attention` on one device (arguments and results as there, without sequence_axis)."""
    check_inputs(q, k, v, stabilizer, causal, padding_mask, initial_state, return_state, stabilize, implementation)
    impl = implementation or default_implementation(causal)
    _check_chunk_size(chunk_size, impl)
    if impl == "pallas" and causal and not interpret and jax.default_backend() not in ("gpu", "tpu"):
        raise ValueError(
            f"implementation='pallas' needs a GPU or a TPU (JAX's backend is {jax.default_backend()!r}); "
            "pass interpret=True to run the kernels on the CPU, or use 'xla'"
        )
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    state0 = initial_state or init_cosine_attention_state(b, h, dk, dv)

    if impl == "reference":
        out, state = _ref.cosine_attention_reference(
            q,
            k,
            v,
            stabilizer,
            causal=causal,
            padding_mask=padding_mask,
            initial_state=(state0.kv, state0.count),
            stabilize=stabilize,
        )
        state = None if state is None else CosineAttentionState(*state)
    elif causal:
        out, state = _causal_linear(q, k, v, stabilizer, padding_mask, state0, stabilize, impl, chunk_size, interpret)
    else:
        out, state = _bidirectional_linear(q, k, v, stabilizer, padding_mask), None

    out = out.astype(q.dtype)
    return (out, state) if return_state else out


def normalized_inputs(q, k, v, padding_mask):
    """q^, k^ (normalised, padded positions zero) in the input dtype, v zeroed likewise, mask (B, T)."""
    b, t = q.shape[:2]
    mask = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
    keep = mask[:, :, None, None]
    qn = jnp.where(keep, _ref.l2_normalize(q), 0).astype(q.dtype)
    kn = jnp.where(keep, _ref.l2_normalize(k), 0).astype(k.dtype)
    vz = jnp.where(keep, v, 0).astype(v.dtype)
    return qn, kn, vz, mask


def _finite_values(vz, mask):
    """vz with its non-finite rows zeroed, and those rows (B, T, KV): kept out of the sums (a matmul
    would spread them to earlier positions) and marked NaN afterwards, as in the reference."""
    bad = _ref.nonfinite_rows(vz, mask)
    return jnp.where(bad[..., None], 0, vz).astype(vz.dtype), bad


def _causal_linear(q, k, v, stabilizer, padding_mask, state0, stabilize, impl, chunk_size, interpret):
    qn, kn, vz, mask = normalized_inputs(q, k, v, padding_mask)
    vz, bad = _finite_values(vz, mask)
    counts = state0.count[:, None] + jnp.cumsum(mask.astype(jnp.int32), axis=1)  # n_i: (B, T)
    scale = _ref.count_scale(counts, stabilizer)  # (B, T, H)
    key_scale = scale if stabilize == "value" else jnp.ones_like(scale)
    if stabilize == "query":  # o_t = (q^_t n_t^-p) S_t: the row factor rides on the query (o is linear in it),
        qn = (qn.astype(jnp.float32) * scale[..., None]).astype(qn.dtype)  # so no unscaled sum is ever an output
    kv0 = state0.kv.astype(jnp.float32)
    if impl == "pallas":
        out, kv = _pallas_kernels(qn, kn, vz, key_scale, kv0, chunk_size, interpret)
    else:
        out, kv = _xla.causal_linear_attention_xla(
            qn, kn, vz, key_scale, kv0, _xla.DEFAULT_CHUNK if chunk_size is None else chunk_size
        )
    out = _ref.poison_reached(out.astype(jnp.float32), bad, causal=True, mask=mask)
    count = state0.count.astype(jnp.int32) + jnp.sum(mask, axis=1, dtype=jnp.int32)
    return out, CosineAttentionState(_ref.poison_state(kv, bad), count)


def pallas_platform() -> Literal["gpu", "tpu"]:
    """Which Pallas kernels `implementation="pallas"` runs: "tpu" (Mosaic) when JAX's backend is a TPU,
    else "gpu" (Triton; on a GPU, or in interpret mode on the CPU)."""
    return "tpu" if jax.default_backend() == "tpu" else "gpu"


def _pallas_kernels(qn, kn, vz, key_scale, kv0, chunk_size, interpret):
    """The Pallas kernels of `pallas_platform()`, imported here: Pallas loads only when used."""
    if pallas_platform() == "tpu":
        from pallas_kernels.cosine_attn import pallas_tpu  # noqa: PLC0415

        tpu_sizes = None
        if chunk_size is not None:
            default = pallas_tpu.TpuBlockSizes.get_default(qn.dtype, qn.shape[-1], vz.shape[-1])
            tpu_sizes = dataclasses.replace(default, chunk=chunk_size)
        return pallas_tpu.causal_linear_attention_pallas_tpu(
            qn, kn, vz, key_scale, kv0, interpret=interpret, block_sizes=tpu_sizes
        )
    from pallas_kernels.cosine_attn import pallas  # noqa: PLC0415

    sizes = None
    if chunk_size is not None:
        sizes = dataclasses.replace(
            pallas.BlockSizes.get_default(qn.dtype, qn.shape[-1], vz.shape[-1]), chunk=chunk_size
        )
    return pallas.causal_linear_attention_pallas(qn, kn, vz, key_scale, kv0, interpret=interpret, block_sizes=sizes)


def _bidirectional_linear(q, k, v, stabilizer, padding_mask):
    """o_t = q^_t (K^T V) max(n, 1)^-p with n the real tokens of the row; linear memory, range-safe."""
    qn, kn, vz, mask = normalized_inputs(q, k, v, padding_mask)
    vz, bad = _finite_values(vz, mask)
    scale = _ref.count_scale(jnp.sum(mask, axis=1, dtype=jnp.int32), stabilizer)  # (B, H)
    out = _xla.bidirectional_linear_attention_xla(qn, kn, vz, scale)  # (B, T, H, Dv) float32
    return _ref.poison_reached(out, bad, causal=False, mask=mask)


# ----------------------------------------------------------------------------- one RNN step


def cosine_attention_step(
    state: CosineAttentionState,
    q_t: jax.Array,
    k_t: jax.Array,
    v_t: jax.Array,
    stabilizer: jax.Array,
    *,
    padding_mask_t: jax.Array | None = None,
    stabilize: Stabilize = "value",
):
    """One step of causal cosine attention as an RNN; constant memory.

    Args:
      state: `CosineAttentionState` with kv (B, H, Dk, Dv) float32, count (B,).
      q_t: (B, H, Dk); k_t: (B, KV, Dk); v_t: (B, KV, Dv).
      stabilizer: (H,) raw m.
      padding_mask_t: optional (B,) bool; False leaves that row's state
        unchanged (whatever q_t, k_t, v_t hold, NaN included) and gives a zero output.
      stabilize: "value" or "query", as in `cosine_attention`.

    Returns:
      (o_t (B, H, Dv) in q_t's dtype, new state).
    """
    _check_choice("stabilize", stabilize, STABILIZE_MODES)
    _check_arrays(q_t=q_t, k_t=k_t, v_t=v_t, stabilizer=stabilizer)
    check_qkv(q_t, k_t, v_t, rank=3, names=("q_t", "k_t", "v_t"), nonempty=True)
    _check_float(stabilizer=stabilizer)
    (b, h, dk), n_kv, dv = q_t.shape, k_t.shape[1], v_t.shape[-1]
    _check_stabilizer(h, stabilizer, q_t)
    _check_state(state, b, h, dk, dv, name="state")
    if padding_mask_t is not None:
        _check_arrays(padding_mask_t=padding_mask_t)
    if padding_mask_t is not None and (
        jnp.shape(padding_mask_t) != (b,) or jnp.result_type(padding_mask_t) != jnp.bool_
    ):
        raise ValueError(
            f"padding_mask_t must be a bool array of shape (batch,) = ({b},); got "
            f"shape {tuple(jnp.shape(padding_mask_t))}, dtype {jnp.result_type(padding_mask_t)}"
        )

    real = jnp.ones((b,), bool) if padding_mask_t is None else padding_mask_t
    group = h // n_kv
    qn = _ref.l2_normalize(q_t).reshape(b, n_kv, group, dk)  # (B, KV, G, Dk)
    kn = _ref.l2_normalize(k_t)  # (B, KV, Dk)
    bad = real[:, None] & ~jnp.all(jnp.isfinite(v_t), axis=-1)  # (B, KV): the state becomes NaN
    vf = jnp.where(bad[..., None], 0.0, v_t.astype(jnp.float32))
    count = state.count.astype(jnp.int32) + real.astype(jnp.int32)
    scale = _ref.count_scale(count, stabilizer).reshape(b, n_kv, group)  # (B, KV, G)
    w = scale if stabilize == "value" else jnp.ones_like(scale)
    kv = state.kv.astype(jnp.float32).reshape(b, n_kv, group, dk, dv)
    update = jnp.einsum("bkd,bke,bkg->bkgde", kn, vf, w)
    kv = jnp.where(real[:, None, None, None, None], kv + update, kv)  # S_t = S_{t-1} + k~ v^T (real rows)
    kv = jnp.where(bad[:, :, None, None, None], jnp.nan, kv)  # a non-finite value: NaN from here on
    out = jnp.einsum("bkgd,bkgde->bkge", qn, kv, precision=_HI)  # o_t = S_t^T q^_t
    if stabilize == "query":
        out = out * scale[..., None]
    out = jnp.where(real[:, None, None, None], out, 0).reshape(b, h, dv)
    return out.astype(q_t.dtype), CosineAttentionState(kv.reshape(b, h, dk, dv), count)
