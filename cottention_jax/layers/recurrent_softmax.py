"""`RecurrentSoftmaxAttention`: the softmax-as-an-RNN variants (arXiv 2507.23632) as a Flax NNX layer.

Same constructor and call as `CosineAttention` / `SoftmaxAttention` (`ProjectedAttention`),
plus `variant`, a name in `cottention_jax.recurrent_softmax.VARIANTS` (e.g. "taylor2",
"taylor2-l2norm", "linear-elu") or an `AttentionVariant`. Causal only.

Parameters beyond the shared projections:
  gate (variants with an output gate): LinearGeneral(in -> (heads, 1)), o <- o * sigmoid(gate(x)),
    one gate per head and position, as in the original code;
  norm_scale / norm_bias ("rms": scale; "layernorm": scale and bias), (heads, head_dim):
    the learned affine part of the norm, applied after it.

Training uses the parallel form by default (fastest at the sequence lengths of the
experiments); `form="recurrent"` scans over chunks with linear memory. Decode mode
carries a `RecurrentSoftmaxState` (per kv head: F x Dv numerator, F denominator),
for variants with a finite RNN state (no exp, no clamp).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype

from cottention_jax import recurrent_softmax as rs
from cottention_jax.layers.projected import ProjectedAttention

__all__ = ["RecurrentSoftmaxAttention"]


class RecurrentSoftmaxAttention(ProjectedAttention):
    """Causal attention of one recurrent-softmax / linear-attention variant."""

    cached_numerator: nnx.Cache | None  # (B, kv_heads, F, head_dim), after init_cache
    cached_denominator: nnx.Cache | None  # (B, kv_heads, F)
    cached_count: nnx.Cache | None  # (B,) real tokens folded into the state

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        *,
        variant: str | rs.AttentionVariant = "taylor2",
        form: Literal["parallel", "recurrent"] = "parallel",
        causal: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        if not causal:
            raise ValueError("RecurrentSoftmaxAttention is causal only; got causal=False")
        if form not in rs.FORMS:
            raise ValueError(f"form must be one of {rs.FORMS}; got {form!r}")
        super().__init__(
            num_heads,
            in_features,
            qkv_features,
            out_features,
            num_kv_heads,
            causal=True,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            **kwargs,
        )
        self.variant = rs.resolve_variant(variant)
        self.form = form
        h, d = self.num_heads, self.head_dim
        self.gate = (
            nnx.LinearGeneral(in_features, (h, 1), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            if self.variant.needs_gate
            else None
        )
        affine = self.variant.denominator in ("rms", "layernorm")
        self.norm_scale = nnx.Param(jnp.ones((h, d), param_dtype)) if affine else None
        self.norm_bias = nnx.Param(jnp.zeros((h, d), param_dtype)) if self.variant.denominator == "layernorm" else None
        self.cached_numerator = nnx.data(None)
        self.cached_denominator = nnx.data(None)
        self.cached_count = nnx.data(None)

    def init_cache(self, input_shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> None:
        """Empty RNN state for a batch of input_shape[0]; its size does not depend on the length."""
        del dtype
        if not self.variant.supports_recurrent:
            raise ValueError(
                f"variant {self.variant} has no finite RNN state (exp or clamp), so it cannot decode step by step"
            )
        state = rs.init_state(self.variant, input_shape[0], self.num_kv_heads, self.head_dim, self.head_dim)
        self.cached_numerator = nnx.Cache(state.numerator)
        self.cached_denominator = nnx.Cache(state.denominator)
        self.cached_count = nnx.Cache(state.count)

    def _tokens_seen(self) -> jax.Array:
        return self._check_cache(self.cached_count)[...]

    def _attend(self, q, k, v, padding_mask, decode, prefill, inputs):
        gate = None if self.gate is None else self.gate(inputs)  # (B, T, H, 1)
        if not decode:
            out = rs.attention(self.variant, q, k, v, padding_mask=padding_mask, gate=gate, form=self.form)
        else:
            self._check_cache(self.cached_numerator)
            state = rs.RecurrentSoftmaxState(
                self.cached_numerator[...], self.cached_denominator[...], self.cached_count[...]
            )
            if prefill:  # restart from the empty state
                state = rs.init_state(self.variant, q.shape[0], self.num_kv_heads, self.head_dim, self.head_dim)
            if q.shape[1] == 1:
                out, state = rs.attention_step(
                    self.variant,
                    state,
                    q[:, 0],
                    k[:, 0],
                    v[:, 0],
                    padding_mask_t=None if padding_mask is None else padding_mask[:, 0],
                    gate_t=None if gate is None else gate[:, 0],
                )
                out = out[:, None]
            else:
                out, state = rs.attention(
                    self.variant, q, k, v, padding_mask=padding_mask, gate=gate, initial_state=state, return_state=True
                )
            self.cached_numerator[...] = state.numerator
            self.cached_denominator[...] = state.denominator
            self.cached_count[...] = state.count
        if self.norm_scale is not None:
            out = out * self.norm_scale[...].astype(out.dtype)
        if self.norm_bias is not None:
            out = out + self.norm_bias[...].astype(out.dtype)
        return out
