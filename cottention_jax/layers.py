"""Flax NNX attention layers: `CosineAttention` and its baseline `SoftmaxAttention`.

Both take the constructor arguments and call convention of
`flax.nnx.MultiHeadAttention` that apply to them (num_heads, in_features,
qkv_features, out_features, num_kv_heads, dtype, param_dtype, use_bias,
kernel_init, bias_init, decode, rngs; called as `attn(x)`), so swapping one
into a model is a one-line change. Projection parameters have the same names
and shapes in both (query/key/value kernels (in, heads, head_dim), out kernel
(heads, head_dim, out)); CosineAttention adds one `stabilizer` (heads,).

Inputs are (B, T, features); padding_mask (B, T) bool, True = real token;
positions (B, T) int for rotary embeddings (default: index among real tokens).

Decode mode (causal only): `init_cache((batch, max_length, features))` once,
then each call continues from the cache. CosineAttention carries a
`CosineAttentionState` (d x d per head: memory constant in the number of
tokens); SoftmaxAttention a key/value cache of max_length positions. A call
with `decode=True, prefill=True` restarts the cache from its tokens (a prompt):
both layers then use their parallel form (SoftmaxAttention its flash path over
the prompt alone, never scores against the empty cache slots).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cottention_jax import softmax_ops
from cottention_jax.ops import (CosineAttentionState, cosine_attention, cosine_attention_step,
                                init_cosine_attention_state)

__all__ = ["CosineAttention", "SoftmaxAttention", "apply_rope", "positions_from_mask"]

# The Taylor / linear variants of the second paper: cottention_jax.rnn_attention.RecurrentSoftmaxAttention.

_default_kernel_init = nnx.initializers.lecun_normal()


def positions_from_mask(padding_mask: jax.Array | None, shape: tuple[int, int],
                        offset: jax.Array | None = None) -> jax.Array:
    """Position of each token among the real tokens of its row: (B, T) int32.

    Left padding therefore does not shift positions. `offset` (B,) adds the
    number of real tokens seen before (decoding).
    """
    if padding_mask is None:
        pos = jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
    else:
        pos = jnp.maximum(jnp.cumsum(padding_mask.astype(jnp.int32), axis=1) - 1, 0)
    return pos if offset is None else pos + offset[:, None].astype(jnp.int32)


def apply_rope(x: jax.Array, positions: jax.Array, rotary_dim: int, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding on the first `rotary_dim` features of each head (GPT-J convention:
    interleaved pairs (x0, x1), (x2, x3), ... rotated by position * base^(-2i / rotary_dim)).

    x: (B, T, H, D); positions: (B, T) int. Returns x's shape and dtype.
    """
    inv_freq = base ** (-jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)   # (R/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq                          # (B, T, R/2)
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    rot = x[..., :rotary_dim].astype(jnp.float32)
    even, odd = rot[..., 0::2], rot[..., 1::2]
    rot = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(rot.shape)
    return jnp.concatenate([rot.astype(x.dtype), x[..., rotary_dim:]], axis=-1)


class _ProjectedAttention(nnx.Module):
    """Projections, rotary embedding and output shared by both attention types.

    Subclasses implement `_attend(q, k, v, padding_mask, decode, prefill, inputs) -> (B, T, H, Dv)`
    (inputs: the layer's query-side input, for layers that compute gates from it;
    prefill: decode mode restarting the cache from these tokens).
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, num_kv_heads: int | None = None, *,
                 causal: bool = False, rotary_dim: int = 0, rope_base: float = 10000.0,
                 dtype=None, param_dtype=jnp.float32, use_bias: bool = True,
                 kernel_init=_default_kernel_init, bias_init=nnx.initializers.zeros_init(),
                 decode: bool = False, rngs: nnx.Rngs):
        qkv_features = qkv_features or in_features
        out_features = out_features or in_features
        num_kv_heads = num_kv_heads or num_heads
        if qkv_features % num_heads:
            raise ValueError(f"qkv_features ({qkv_features}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        head_dim = qkv_features // num_heads
        if rotary_dim < 0 or rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim must be even and in [0, head_dim={head_dim}]; got {rotary_dim}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.in_features, self.out_features = in_features, out_features
        self.causal, self.rotary_dim, self.rope_base = causal, rotary_dim, rope_base
        self.dtype, self.decode = dtype, decode
        dense = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
                     bias_init=bias_init, rngs=rngs)
        self.query = nnx.LinearGeneral(in_features, (num_heads, head_dim), **dense)
        self.key = nnx.LinearGeneral(in_features, (num_kv_heads, head_dim), **dense)
        self.value = nnx.LinearGeneral(in_features, (num_kv_heads, head_dim), **dense)
        self.out = nnx.LinearGeneral((num_heads, head_dim), out_features, axis=(-2, -1), **dense)

    def __call__(self, inputs_q: jax.Array, inputs_k: jax.Array | None = None,
                 inputs_v: jax.Array | None = None, *, padding_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, decode: bool | None = None,
                 prefill: bool = False) -> jax.Array:
        """inputs (B, T, in_features) -> (B, T, out_features).

        inputs_k / inputs_v default to inputs_q (self-attention) and must have
        its length. padding_mask (B, T) bool; positions (B, T) int (rotary).
        decode: continue from the cache (causal layers; `init_cache` first); prefill (with
        decode): restart the cache from these tokens instead of continuing it.
        """
        if inputs_q.ndim != 3 or inputs_q.shape[-1] != self.in_features:
            raise ValueError(f"inputs_q must have shape (batch, seq, {self.in_features}); "
                             f"got inputs_q.shape={inputs_q.shape}")
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        q, k, v = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)   # (B, T, heads, D)
        if self.rotary_dim:
            if positions is None:
                positions = positions_from_mask(padding_mask, q.shape[:2])
            q = apply_rope(q, positions, self.rotary_dim, self.rope_base)
            k = apply_rope(k, positions, self.rotary_dim, self.rope_base)
        decode = self.decode if decode is None else decode
        if decode and not self.causal:
            raise ValueError("decode=True needs a causal attention layer (causal=True)")
        if prefill and not decode:
            raise ValueError("prefill=True restarts the decode cache; it needs decode=True")
        out = self._attend(q, k, v, padding_mask, decode, prefill, inputs_q)
        return self.out(out)

    def _check_cache(self, cache) -> None:
        if cache is None:
            raise ValueError(f"{type(self).__name__}: call init_cache((batch, max_length, features)) "
                             "before calling with decode=True")


class CosineAttention(_ProjectedAttention):
    """Multi-head cosine attention (Cottention) as a Flax NNX module.

    Extra arguments over `_ProjectedAttention`'s:
      stabilizer_init: initial raw stabilizer m per head (0.5 as in the paper); values are scaled
        by max(n, 1) ** -sigmoid(m).
      stabilize: "value" or "query" (see `cottention_jax.cosine_attention`).
      implementation: passed to `cosine_attention` (None picks per backend).
      interpret: passed to `cosine_attention` (run its Pallas kernels in interpret mode, on CPU).
      sequence_axis: passed to `cosine_attention` outside decode mode: under a mesh (`jax.set_mesh`)
        with this axis, the sequence is split over it (`cottention_jax.parallel`).
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, num_kv_heads: int | None = None, *,
                 stabilizer_init: float = 0.5, stabilize: str = "value",
                 implementation: str | None = None, interpret: bool = False, sequence_axis: str | None = None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs, **kwargs):
        super().__init__(num_heads, in_features, qkv_features, out_features, num_kv_heads,
                         param_dtype=param_dtype, rngs=rngs, **kwargs)
        self.stabilizer = nnx.Param(jnp.full((num_heads,), stabilizer_init, param_dtype))
        self.stabilize, self.implementation, self.interpret = stabilize, implementation, interpret
        self.sequence_axis = sequence_axis
        self.cached_kv = nnx.data(None)
        self.cached_count = nnx.data(None)

    def init_cache(self, input_shape: tuple[int, ...], dtype=jnp.float32) -> None:
        """Empty RNN state for a batch of input_shape[0]; its size does not depend on the length.

        `dtype` is accepted for nnx.MultiHeadAttention compatibility; the state is float32.
        """
        del dtype
        state = init_cosine_attention_state(input_shape[0], self.num_heads, self.head_dim, self.head_dim)
        self.cached_kv = nnx.Cache(state.kv)
        self.cached_count = nnx.Cache(state.count)

    def _attend(self, q, k, v, padding_mask, decode, prefill, inputs):
        del inputs
        stab = self.stabilizer[...]
        if not decode:
            return cosine_attention(q, k, v, stab, causal=self.causal, padding_mask=padding_mask,
                                    stabilize=self.stabilize, implementation=self.implementation,
                                    interpret=self.interpret, sequence_axis=self.sequence_axis)
        self._check_cache(self.cached_kv)
        state = CosineAttentionState(self.cached_kv[...], self.cached_count[...])
        if prefill:           # restart from the empty state
            state = init_cosine_attention_state(q.shape[0], self.num_heads, self.head_dim, self.head_dim)
        if q.shape[1] == 1:   # one token: one RNN step, no chunk padding
            mask_t = None if padding_mask is None else padding_mask[:, 0]
            out, state = cosine_attention_step(state, q[:, 0], k[:, 0], v[:, 0], stab,
                                               padding_mask_t=mask_t, stabilize=self.stabilize)
            out = out[:, None]
        else:                 # a prompt: the parallel form, continuing from and returning the state
            out, state = cosine_attention(q, k, v, stab, causal=True, padding_mask=padding_mask,
                                          initial_state=state, return_state=True,
                                          stabilize=self.stabilize, implementation=self.implementation,
                                          interpret=self.interpret)
        self.cached_kv[...], self.cached_count[...] = state.kv, state.count
        return out


class SoftmaxAttention(_ProjectedAttention):
    """Multi-head softmax attention, the baseline: `cottention_jax.softmax_ops.softmax_attention`.

    Same constructor and call as CosineAttention (minus the cosine-only arguments,
    which are accepted and ignored so configs can switch freely). Padded
    query positions output zero, as in CosineAttention.

      implementation: passed to `softmax_attention`: "xla" (dense scores), "cudnn" or "pallas"
        (flash, linear memory); None picks the fastest that applies on the backend.
      interpret: passed to `softmax_attention` (the "pallas" kernel in interpret mode, on CPU).

    Decode mode attends over the key/value cache with a dense mask (XLA), whatever implementation.
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, num_kv_heads: int | None = None, *,
                 stabilizer_init: float | None = None, stabilize: str | None = None,
                 implementation: str | None = None, interpret: bool = False, sequence_axis: str | None = None,
                 rngs: nnx.Rngs, **kwargs):
        del stabilizer_init, stabilize, sequence_axis   # a split sequence: XLA partitions the flash call
        if implementation is not None and implementation not in softmax_ops.IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {softmax_ops.IMPLEMENTATIONS} or None; "
                             f"got {implementation!r}")
        super().__init__(num_heads, in_features, qkv_features, out_features, num_kv_heads,
                         rngs=rngs, **kwargs)
        self.implementation, self.interpret = implementation, interpret
        self.cached_key = nnx.data(None)
        self.cached_value = nnx.data(None)
        self.cache_mask = nnx.data(None)
        self.cache_index = nnx.data(None)

    def init_cache(self, input_shape: tuple[int, ...], dtype=jnp.float32) -> None:
        """Key/value cache for input_shape = (batch, max_length, ...): grows with max_length."""
        b, length = input_shape[:2]
        shape = (b, length, self.num_kv_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
        self.cache_mask = nnx.Cache(jnp.zeros((b, length), bool))
        self.cache_index = nnx.Cache(jnp.array(0, jnp.int32))

    def _attend(self, q, k, v, padding_mask, decode, prefill, inputs):
        del inputs
        if not decode or prefill:   # the parallel (flash) form; padded query rows come back zero
            out = softmax_ops.softmax_attention(q, k, v, causal=self.causal, padding_mask=padding_mask,
                                                implementation=self.implementation, interpret=self.interpret)
            if decode:
                self._restart_cache(k, v, padding_mask)
            return out
        b, t = q.shape[:2]
        real = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
        self._check_cache(self.cached_key)
        idx = self.cache_index[...]
        keys = jax.lax.dynamic_update_slice(self.cached_key[...], k.astype(self.cached_key[...].dtype),
                                            (0, idx, 0, 0))
        values = jax.lax.dynamic_update_slice(self.cached_value[...],
                                              v.astype(self.cached_value[...].dtype), (0, idx, 0, 0))
        seen = jax.lax.dynamic_update_slice(self.cache_mask[...], real, (0, idx))   # (B, L)
        # query j sits at slot idx + j and sees the real slots up to its own
        slots = jnp.arange(keys.shape[1])
        causal = slots[None, :] <= (idx + jnp.arange(t))[:, None]                    # (T, L)
        mask = causal[None, None] & seen[:, None, None, :]                          # (B, 1, T, L)
        out = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask)
        self.cached_key[...], self.cached_value[...] = keys, values
        self.cache_mask[...], self.cache_index[...] = seen, idx + t
        return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)

    def _restart_cache(self, k, v, padding_mask) -> None:
        """The cache holds exactly these T tokens: slots [0, T) written, the rest empty."""
        self._check_cache(self.cached_key)
        b, t = k.shape[:2]
        length = self.cached_key[...].shape[1]
        if t > length:
            raise ValueError(f"the prompt ({t} tokens) is longer than the KV cache ({length} slots); "
                             f"init_cache with max_length >= {t}")
        real = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
        zeros = jnp.zeros_like(self.cached_key[...])
        self.cached_key[...] = jax.lax.dynamic_update_slice(zeros, k.astype(zeros.dtype), (0, 0, 0, 0))
        self.cached_value[...] = jax.lax.dynamic_update_slice(zeros, v.astype(zeros.dtype), (0, 0, 0, 0))
        self.cache_mask[...] = jnp.zeros((b, length), bool).at[:, :t].set(real)
        self.cache_index[...] = jnp.array(t, jnp.int32)
