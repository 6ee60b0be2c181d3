"""The entry points a layer calls: `attention` (whole sequence), `attention_step` (decoding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cottention_jax._util import check_float as _check_float
from cottention_jax._util import check_qkv
from cottention_jax.recurrent_softmax.denominators import combine
from cottention_jax.recurrent_softmax.features import feature_dim
from cottention_jax.recurrent_softmax.forms import (
    RecurrentSoftmaxState,
    parallel_form,
    recurrent_form,
    step_form,
    zero_state,
)
from cottention_jax.recurrent_softmax.variants import AttentionVariant, resolve_variant

__all__ = ["FORMS", "attention", "attention_step", "init_state", "state_size"]

FORMS = ("parallel", "recurrent")
DEFAULT_CHUNK = 64


# ----------------------------------------------------------------------------- checks


def _shapes(**arrays) -> str:
    return ", ".join(f"{name}.shape={tuple(jnp.shape(a))}" for name, a in arrays.items())


def _check_gate(variant: AttentionVariant, gate, expected: tuple, name: str) -> None:
    if gate is None:
        if variant.needs_gate:
            raise ValueError(
                f"this variant has gate=True and needs {name} of shape {expected} "
                f"(or with last axis 1); got {name}=None"
            )
        return
    if not variant.needs_gate:
        raise ValueError(f"this variant has gate=False, so {name} must be None; got {_shapes(**{name: gate})}")
    _check_float(**{name: gate})
    if jnp.shape(gate) not in (expected, expected[:-1] + (1,)):
        raise ValueError(f"{name} must have shape {expected} or {expected[:-1] + (1,)}; got {_shapes(**{name: gate})}")


def _check_mask(mask, expected: tuple, name: str) -> None:
    if mask is None:
        return
    if jnp.shape(mask) != expected or jnp.result_type(mask) != jnp.bool_:
        raise ValueError(
            f"{name} must be a bool array of shape {expected} (True = real token); got "
            f"{name}.shape={tuple(jnp.shape(mask))}, dtype {jnp.result_type(mask)}"
        )


def _check_state(variant: AttentionVariant, state, b: int, n_kv: int, d: int, dv: int, name: str) -> None:
    if not variant.supports_recurrent:
        raise ValueError(
            f"{name} needs a variant with a finite RNN state (no 'exp' feature, no "
            f"clamp); got feature={variant.feature!r}, clamp={variant.clamp!r}"
        )
    if not isinstance(state, RecurrentSoftmaxState):
        raise ValueError(
            f"{name} must be a RecurrentSoftmaxState(numerator, denominator, count); got {type(state).__name__}"
        )
    f = feature_dim(variant, d)
    want = {"numerator": (b, n_kv, f, dv), "denominator": (b, n_kv, f), "count": (b,)}
    for field, shape in want.items():
        got = tuple(jnp.shape(getattr(state, field)))
        if got != shape:
            raise ValueError(
                f"{name}.{field} must have shape {shape} (batch, kv_heads, F={f} "
                f"features, value_dim); got {name}.{field}.shape={got}"
            )
    if not jnp.issubdtype(jnp.result_type(state.count), jnp.integer):
        raise ValueError(f"{name}.count must be an integer array; got dtype {jnp.result_type(state.count)}")
    _check_float(**{f"{name}.numerator": state.numerator, f"{name}.denominator": state.denominator})


def _as_f32_state(state: RecurrentSoftmaxState) -> RecurrentSoftmaxState:
    return RecurrentSoftmaxState(
        state.numerator.astype(jnp.float32), state.denominator.astype(jnp.float32), state.count.astype(jnp.int32)
    )


# ----------------------------------------------------------------------------- entry points


def init_state(variant, batch: int, kv_heads: int, head_dim: int, value_dim: int) -> RecurrentSoftmaxState:
    """The state of an empty prefix (zeros, count 0) for a recurrent-capable variant."""
    variant = resolve_variant(variant)
    if not variant.supports_recurrent:
        raise ValueError(
            f"init_state needs a variant with a finite RNN state (no 'exp' feature, "
            f"no clamp); got feature={variant.feature!r}, clamp={variant.clamp!r}"
        )
    return zero_state(variant, batch, kv_heads, head_dim, value_dim)


def state_size(variant, head_dim: int, value_dim: int) -> int:
    """Floats in the RNN state per (batch, kv head): F * Dv + F (+ one count per batch row)."""
    f = feature_dim(resolve_variant(variant), head_dim)
    return f * (value_dim + 1)


def attention(
    variant: str | AttentionVariant,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    padding_mask: jax.Array | None = None,
    gate: jax.Array | None = None,
    form: str = "parallel",
    chunk_size: int = DEFAULT_CHUNK,
    initial_state: RecurrentSoftmaxState | None = None,
    return_state: bool = False,
):
    """Causal attention of one variant (Taylor softmax, exp, or linear), whole sequence.

    Args:
      variant: a name in `VARIANTS` or an `AttentionVariant` (every ablation choice).
      q: (B, T, H, D); k: (B, T, KV, D); v: (B, T, KV, Dv); H % KV == 0, one float dtype.
      padding_mask: optional (B, T) bool, True = real token; padded keys are ignored,
        padded query rows give exactly 0, and n_t counts real tokens only.
      gate: (B, T, H, Dv) or (B, T, H, 1), raw, iff `variant.needs_gate`:
        o <- o * sigmoid(gate) after the denominator.
      form: "parallel" (quadratic (T, T) kernel, any variant) or "recurrent"
        (lax.scan over chunks carrying the states; recurrent-capable variants).
      chunk_size: positions per scan step of the recurrent form.
      initial_state: a `RecurrentSoftmaxState` to continue from (e.g. after a prompt).
      return_state: also return the state after the last position.

    Returns:
      out (B, T, H, Dv) in q's dtype, or (out, RecurrentSoftmaxState) when return_state.
      Kernels, sums and states are float32 whatever the input dtype.
    """
    variant = resolve_variant(variant)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {form!r}")
    check_qkv(q, k, v, rank=4)
    b, t, h, d = q.shape
    n_kv, dv = k.shape[2], v.shape[-1]
    _check_mask(padding_mask, (b, t), "padding_mask")
    _check_gate(variant, gate, (b, t, h, dv), "gate")
    if form == "recurrent" and not variant.supports_recurrent:
        raise ValueError(
            f"form='recurrent' needs a variant with a finite RNN state (no 'exp' "
            f"feature, no clamp); got feature={variant.feature!r}, "
            f"clamp={variant.clamp!r}: use form='parallel'"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if initial_state is not None:
        _check_state(variant, initial_state, b, n_kv, d, dv, "initial_state")
    elif return_state and not variant.supports_recurrent:
        raise ValueError(
            f"return_state needs a variant with a finite RNN state (no 'exp' feature, "
            f"no clamp); got feature={variant.feature!r}, clamp={variant.clamp!r}"
        )

    # Zero padded positions (their keys are also masked out of every sum).
    real = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
    keep = real[:, :, None, None]
    qf, kf, vf = (jnp.where(keep, x.astype(jnp.float32), 0.0) for x in (q, k, v))
    scale = variant.resolved_scale(d)
    state0 = None if initial_state is None else _as_f32_state(initial_state)

    if form == "parallel":
        num, den, final = parallel_form(variant, qf, kf, vf, real, scale, state0, return_state)
    else:
        state0 = state0 or zero_state(variant, b, n_kv, d, dv)
        num, den, final = recurrent_form(variant, qf, kf, vf, real, scale, state0, chunk_size)

    count0 = 0 if state0 is None else state0.count[:, None]
    count = count0 + jnp.cumsum(real.astype(jnp.int32), axis=1)  # n_t: (B, T)
    count = jnp.broadcast_to(count[:, :, None], den.shape)
    out = combine(variant, num, den, count, jnp.broadcast_to(real[:, :, None], den.shape), gate)
    out = out.astype(q.dtype)
    return (out, final) if return_state else out


def attention_step(
    variant: str | AttentionVariant,
    state: RecurrentSoftmaxState,
    q_t: jax.Array,
    k_t: jax.Array,
    v_t: jax.Array,
    *,
    padding_mask_t: jax.Array | None = None,
    gate_t: jax.Array | None = None,
):
    """One decoding step of a recurrent-capable variant; constant memory in the prefix length.

    Args:
      variant: a name in `VARIANTS` or an `AttentionVariant`.
      state: `RecurrentSoftmaxState` from `init_state`, `attention(..., return_state=True)`
        or a previous step.
      q_t: (B, H, D); k_t: (B, KV, D); v_t: (B, KV, Dv).
      padding_mask_t: optional (B,) bool; False leaves that row's state unchanged and
        gives a zero output.
      gate_t: (B, H, Dv) or (B, H, 1) iff `variant.needs_gate`.

    Returns:
      (o_t (B, H, Dv) in q_t's dtype, new state): the same o_t as `attention` gives at
      this position for the whole prefix.
    """
    variant = resolve_variant(variant)
    check_qkv(q_t, k_t, v_t, rank=3, names=("q_t", "k_t", "v_t"))
    b, h, d = q_t.shape
    n_kv, dv = k_t.shape[1], v_t.shape[-1]
    _check_state(variant, state, b, n_kv, d, dv, "state")
    _check_mask(padding_mask_t, (b,), "padding_mask_t")
    _check_gate(variant, gate_t, (b, h, dv), "gate_t")

    real = jnp.ones((b,), bool) if padding_mask_t is None else padding_mask_t
    keep = real[:, None, None]
    qf, kf, vf = (jnp.where(keep, x.astype(jnp.float32), 0.0) for x in (q_t, k_t, v_t))
    num, den, state = step_form(variant, _as_f32_state(state), qf, kf, vf, real, variant.resolved_scale(d))
    count = jnp.broadcast_to(state.count[:, None], den.shape)
    out = combine(variant, num, den, count, jnp.broadcast_to(real[:, None], den.shape), gate_t)
    return out.astype(q_t.dtype), state
