"""Flax NNX attention layers: `CosineAttention` and its baseline `SoftmaxAttention`.

Both take the constructor arguments and call convention of
`flax.nnx.MultiHeadAttention` that apply to them (num_heads, in_features,
qkv_features, out_features, num_kv_heads, in_kv_features, dtype, param_dtype,
use_bias, kernel_init, bias_init, out_kernel_init, out_bias_init, precision,
dropout_rate, broadcast_dropout, deterministic, keep_rngs, decode, rngs; called as
`attn(x)`, `attn(x, memory, mask=..., deterministic=..., rngs=...)`), so swapping one
into a model is a one-line change. Projection parameters have the same names and
shapes as nnx.MultiHeadAttention's (query/key/value kernels (in, heads, head_dim), out
kernel (heads, head_dim, out)); CosineAttention adds one `stabilizer` (heads,).

Inputs are (B, T, features); padding_mask (B, T) bool, True = real token, or a Flax
`mask` (B, heads, T, S) of the padding form (`attention_fn.padding_from_mask`;
SoftmaxAttention takes any mask); keys of another length S: cross-attention
(bidirectional layers); positions (B, T) int for rotary embeddings (default: index
among real tokens). dropout_rate drops whole value vectors (`attention_fn` docstring).

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
from cottention_jax.attention_fn import cosine_cross_attention, mask_as_bool, padding_from_mask
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


def _attended_keys(mask: jax.Array, batch: int, length: int) -> jax.Array:
    """(B, T) bool: the positions some query attends to under a self-attention Flax mask."""
    return jnp.any(mask_as_bool(mask, batch, length, length), axis=(1, 2))


class _ProjectedAttention(nnx.Module):
    """Projections, rotary embedding, value dropout and output shared by the attention types.

    Subclasses implement `_attend(q, k, v, padding_mask, decode, prefill, inputs) -> (B, T, H, Dv)`
    (inputs: the layer's query-side input, for layers that compute gates from it;
    prefill: decode mode restarting the cache from these tokens), and may implement
    `_attend_cross(q, k, v, query_mask, key_mask)` (bidirectional, T != S allowed) or
    `_attend_masked(q, k, v, mask, inputs)` (a Flax-style `mask=`).
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, num_kv_heads: int | None = None, *,
                 in_kv_features: int | None = None, causal: bool = False, rotary_dim: int = 0,
                 rope_base: float = 10000.0, dtype=None, param_dtype=jnp.float32, use_bias: bool = True,
                 kernel_init=_default_kernel_init, bias_init=nnx.initializers.zeros_init(),
                 out_kernel_init=None, out_bias_init=None, precision=None, dropout_rate: float = 0.0,
                 broadcast_dropout: bool = True, deterministic: bool | None = None, keep_rngs: bool = True,
                 decode: bool = False, rngs: nnx.Rngs):
        qkv_features = qkv_features or in_features
        out_features = out_features or in_features
        in_kv_features = in_kv_features or in_features
        num_kv_heads = num_kv_heads or num_heads
        if qkv_features % num_heads:
            raise ValueError(f"qkv_features ({qkv_features}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        head_dim = qkv_features // num_heads
        if rotary_dim < 0 or rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim must be even and in [0, head_dim={head_dim}]; got {rotary_dim}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.in_features, self.in_kv_features, self.out_features = in_features, in_kv_features, out_features
        self.causal, self.rotary_dim, self.rope_base = causal, rotary_dim, rope_base
        self.dtype, self.decode, self.deterministic = dtype, decode, deterministic
        self.dropout_rate, self.broadcast_dropout = dropout_rate, broadcast_dropout
        dense = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.query = nnx.LinearGeneral(in_features, (num_heads, head_dim), kernel_init=kernel_init,
                                       bias_init=bias_init, **dense)
        self.key = nnx.LinearGeneral(in_kv_features, (num_kv_heads, head_dim), kernel_init=kernel_init,
                                     bias_init=bias_init, **dense)
        self.value = nnx.LinearGeneral(in_kv_features, (num_kv_heads, head_dim), kernel_init=kernel_init,
                                       bias_init=bias_init, **dense)
        self.out = nnx.LinearGeneral((num_heads, head_dim), out_features, axis=(-2, -1),
                                     kernel_init=out_kernel_init or kernel_init,
                                     bias_init=out_bias_init or bias_init, **dense)
        # As nnx.MultiHeadAttention: a dropout stream only when there is dropout (so the state of a
        # layer without it is unchanged). v (B, S, KV, Dv): one draw per (row, position, kv head), or
        # per position shared by every row and head with broadcast_dropout.
        self.value_dropout = nnx.data(None) if dropout_rate == 0 else nnx.Dropout(
            dropout_rate, broadcast_dims=(0, 2, 3) if broadcast_dropout else (3,), deterministic=deterministic,
            rngs=rngs if keep_rngs else None)

    def __call__(self, inputs_q: jax.Array, inputs_k: jax.Array | None = None,
                 inputs_v: jax.Array | None = None, *, mask: jax.Array | None = None,
                 padding_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 deterministic: bool | None = None, rngs: nnx.Rngs | None = None, sow_weights: bool = False,
                 decode: bool | None = None, prefill: bool = False, is_causal: bool = False) -> jax.Array:
        """inputs_q (B, T, in_features) -> (B, T, out_features); the call of `nnx.MultiHeadAttention`.

        inputs_k / inputs_v (B, S, in_kv_features) default to inputs_q (self-attention); with
        another length S, cross-attention (bidirectional layers). Masking, one of:
          padding_mask (B, T) bool, self-attention: True = real token;
          mask: a Flax attention mask broadcastable to (B, heads, T, S), True = attend, of the
            form query_real & key_real (& causal), e.g. `nnx.make_attention_mask(q_real, k_real)`
            (SoftmaxAttention takes any mask; see `cottention_jax.attention_fn.padding_from_mask`).
        Padded (wholly masked) query rows output the projection of zero. positions (B, T) int:
        rotary positions. deterministic / rngs: the value dropout (`dropout_rate`), as in Flax.
        is_causal: accepted for Flax's call; True needs a layer built with causal=True.
        decode: continue from the cache (causal layers; `init_cache` first); prefill (with
        decode): restart the cache from these tokens instead of continuing it.
        """
        if inputs_q.ndim != 3 or inputs_q.shape[-1] != self.in_features:
            raise ValueError(f"inputs_q must have shape (batch, seq, {self.in_features}); "
                             f"got inputs_q.shape={inputs_q.shape}")
        if inputs_k is None and inputs_v is not None:
            raise ValueError("inputs_v needs inputs_k (pass the same array as inputs_k for keys = values)")
        cross = inputs_k is not None and inputs_k is not inputs_q
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        if (inputs_k.ndim != 3 or inputs_k.shape[-1] != self.in_kv_features or inputs_v.ndim != 3
                or inputs_k.shape[0] != inputs_q.shape[0] or inputs_v.shape[:2] != inputs_k.shape[:2]
                or inputs_v.shape[-1] != self.in_kv_features):
            raise ValueError(f"inputs_k and inputs_v must have shape (batch={inputs_q.shape[0]}, kv_seq, "
                             f"{self.in_kv_features}); got inputs_k.shape={inputs_k.shape}, "
                             f"inputs_v.shape={inputs_v.shape}")
        if sow_weights:
            raise ValueError(f"sow_weights=True: {type(self).__name__} does not sow attention weights "
                             "(cosine attention never forms them)")
        if is_causal and not self.causal:
            raise ValueError(f"is_causal=True on a bidirectional layer: build {type(self).__name__}(causal=True)")
        if mask is not None and padding_mask is not None:
            raise ValueError("pass either padding_mask (B, T) or mask (B, heads, T, S), not both")
        decode = self.decode if decode is None else decode
        if decode and not self.causal:
            raise ValueError("decode=True needs a causal attention layer (causal=True)")
        if prefill and not decode:
            raise ValueError("prefill=True restarts the decode cache; it needs decode=True")
        masked = mask is not None or inputs_k.shape[1] != inputs_q.shape[1]
        if masked and padding_mask is not None:
            raise ValueError("padding_mask is for self-attention; with keys of another length pass mask= "
                             "(B, 1, T, S), e.g. nnx.make_attention_mask(query_real, key_real)")
        if masked and decode:
            raise ValueError("decode=True takes padding_mask (B, T), not mask= or keys of another length")
        q, k, v = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)   # (B, T|S, heads, D)
        if self.rotary_dim:
            if cross and masked:
                raise ValueError("rotary embeddings (rotary_dim > 0) need self-attention: the keys of another "
                                 "sequence have no positions of their own here")
            if positions is None:   # the index among real tokens (those some query attends to, under a mask)
                real = padding_mask if mask is None else _attended_keys(mask, *q.shape[:2])
                positions = positions_from_mask(real, q.shape[:2])
            q = apply_rope(q, positions, self.rotary_dim, self.rope_base)
            k = apply_rope(k, positions, self.rotary_dim, self.rope_base)
        if self.value_dropout is not None:
            v = self.value_dropout(v, deterministic=deterministic, rngs=rngs)
        if masked:
            out = self._attend_masked(q, k, v, mask, inputs_q)
        else:
            out = self._attend(q, k, v, padding_mask, decode, prefill, inputs_q)
        return self.out(out)

    def _attend_masked(self, q, k, v, mask, inputs):
        """Attention under a Flax mask (None: cross-attention over every key): reduced to padding
        (`padding_from_mask`); causal layers then use `_attend`, bidirectional ones `_attend_cross`."""
        (b, t), s = q.shape[:2], k.shape[1]
        if mask is None:
            query_real, key_real = jnp.ones((b, t), bool), jnp.ones((b, s), bool)
        else:
            query_real, key_real = padding_from_mask(mask, b, t, s, causal=self.causal)
        if not self.causal:
            return self._attend_cross(q, k, v, query_real, key_real)
        if t != s:
            raise ValueError(f"a causal layer attends over its own sequence: keys of length {s} for "
                             f"{t} queries")
        out = self._attend(q, k, v, key_real, False, False, inputs)
        return jnp.where(query_real[:, :, None, None], out, 0).astype(out.dtype)

    def _attend_cross(self, q, k, v, query_mask, key_mask):
        raise ValueError(f"{type(self).__name__} does not take cross-attention or a mask= (use padding_mask)")

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


    def _attend_cross(self, q, k, v, query_mask, key_mask):
        """Bidirectional attention of T queries over S keys (`attention_fn.cosine_cross_attention`)."""
        return cosine_cross_attention(q, k, v, self.stabilizer[...], query_mask=query_mask, key_mask=key_mask)


class SoftmaxAttention(_ProjectedAttention):
    """Multi-head softmax attention, the baseline: `cottention_jax.softmax_ops.softmax_attention`.

    Same constructor and call as CosineAttention (minus the cosine-only arguments,
    which are accepted and ignored so configs can switch freely). Padded
    query positions output zero, as in CosineAttention.

      implementation: passed to `softmax_attention`: "xla" (dense scores), "cudnn" or "pallas"
        (flash, linear memory); None picks the fastest that applies on the backend.
      interpret: passed to `softmax_attention` (the "pallas" kernel in interpret mode, on CPU).

    Decode mode attends over the key/value cache with a dense mask (XLA), whatever implementation.
    A decode call that would write past the cache's max_length gives NaN outputs (under jit the
    index is not known while tracing; `decoding.make_decode_step` refuses such a step eagerly).
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
        # past the end, dynamic_update_slice would clamp and overwrite the newest slots: poison instead
        fits = idx + t <= keys.shape[1]
        # query j sits at slot idx + j and sees the real slots up to its own
        slots = jnp.arange(keys.shape[1])
        causal = slots[None, :] <= (idx + jnp.arange(t))[:, None]                    # (T, L)
        mask = causal[None, None] & seen[:, None, None, :]                          # (B, 1, T, L)
        out = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask)
        self.cached_key[...], self.cached_value[...] = keys, values
        self.cache_mask[...], self.cache_index[...] = seen, idx + t
        out = jnp.where(fits, jnp.where(real[:, :, None, None], out, 0), jnp.nan)
        return out.astype(q.dtype)

    def _attend_masked(self, q, k, v, mask, inputs):
        """Any Flax mask (None: every key), as nnx.MultiHeadAttention: dense scores (XLA), causal layers
        with a causal mask on top. Query rows that attend to no key output zero."""
        del inputs
        (b, t), s = q.shape[:2], k.shape[1]
        attend = jnp.ones((b, 1, t, s), bool) if mask is None else mask_as_bool(mask, b, t, s)
        if self.causal:
            if t != s:
                raise ValueError(f"a causal layer attends over its own sequence: keys of length {s} for "
                                 f"{t} queries")
            attend = attend & jnp.tril(jnp.ones((t, s), bool))
        out = jax.nn.dot_product_attention(q, k, v, mask=attend)
        return jnp.where(jnp.any(attend, axis=(1, 3))[:, :, None, None], out, 0).astype(q.dtype)

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
