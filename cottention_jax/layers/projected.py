"""`ProjectedAttention`: what every attention layer here shares, the attention itself left out.

The base class holds the query/key/value/output projections (parameter names and shapes as
`flax.nnx.MultiHeadAttention`'s: query/key/value kernels (in, heads, head_dim), out kernel
(heads, head_dim, out)), rotary embeddings, value dropout, the checks of the call and the
reduction of a Flax `mask=` to padding. A layer type subclasses it and implements `_attend`
(and, optionally, `_attend_cross` / `_attend_masked`); see `cosine.py`, `softmax.py`,
`recurrent_softmax.py`.

Shapes: inputs (B, T, features); q, k, v after projection (B, T|S, heads, head_dim);
padding masks (B, T) bool, True = real token.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer, PrecisionLike

from cottention_jax.attention_fn import mask_as_bool, padding_from_mask
from cottention_jax.layers.rope import apply_rope, positions_from_mask

__all__ = ["ProjectedAttention"]

_default_kernel_init = nnx.initializers.lecun_normal()
_default_bias_init = nnx.initializers.zeros_init()


def _attended_keys(mask: jax.Array, batch: int, length: int) -> jax.Array:
    """(B, T) bool: the positions some query attends to under a self-attention Flax mask."""
    return jnp.any(mask_as_bool(mask, batch, length, length), axis=(1, 2))


class ProjectedAttention(nnx.Module):
    """Projections, rotary embedding, value dropout and output shared by the attention types.

    Subclasses implement the abstract `_attend(q, k, v, padding_mask, decode, prefill, inputs)
    -> (B, T, H, Dv)`
    (inputs: the layer's query-side input, for layers that compute gates from it;
    prefill: decode mode restarting the cache from these tokens), and may implement
    `_attend_cross(q, k, v, query_mask, key_mask)` (bidirectional, T != S allowed) or
    `_attend_masked(q, k, v, mask, inputs)` (a Flax-style `mask=`). Layers that decode implement
    `_tokens_seen() -> (B,)`: the real tokens in the cache, where decoding continues the rotary
    positions.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        *,
        in_kv_features: int | None = None,
        causal: bool = False,
        rotary_dim: int = 0,
        rope_base: float = 10000.0,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        kernel_init: Initializer = _default_kernel_init,
        bias_init: Initializer = _default_bias_init,
        out_kernel_init: Initializer | None = None,
        out_bias_init: Initializer | None = None,
        precision: PrecisionLike = None,
        dropout_rate: float = 0.0,
        broadcast_dropout: bool = True,
        deterministic: bool | None = None,
        keep_rngs: bool = True,
        decode: bool = False,
        rngs: nnx.Rngs,
    ):
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
        dense: dict[str, Any] = dict(
            use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs
        )
        self.query = nnx.LinearGeneral(
            in_features, (num_heads, head_dim), kernel_init=kernel_init, bias_init=bias_init, **dense
        )
        self.key = nnx.LinearGeneral(
            in_kv_features, (num_kv_heads, head_dim), kernel_init=kernel_init, bias_init=bias_init, **dense
        )
        self.value = nnx.LinearGeneral(
            in_kv_features, (num_kv_heads, head_dim), kernel_init=kernel_init, bias_init=bias_init, **dense
        )
        self.out = nnx.LinearGeneral(
            (num_heads, head_dim),
            out_features,
            axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init,
            **dense,
        )
        # As nnx.MultiHeadAttention: a dropout stream only when there is dropout (so the state of a
        # layer without it is unchanged). v (B, S, KV, Dv): one draw per (row, position, kv head), or
        # per position shared by every row and head with broadcast_dropout.
        self.value_dropout = (
            nnx.data(None)
            if dropout_rate == 0
            else nnx.Dropout(
                dropout_rate,
                broadcast_dims=(0, 2, 3) if broadcast_dropout else (3,),
                deterministic=deterministic,
                rngs=rngs if keep_rngs else None,
            )
        )

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        padding_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
        prefill: bool = False,
        is_causal: bool = False,
    ) -> jax.Array:
        """inputs_q (B, T, in_features) -> (B, T, out_features); the call of `nnx.MultiHeadAttention`.

        inputs_k / inputs_v (B, S, in_kv_features) default to inputs_q (self-attention); with
        another length S, cross-attention (bidirectional layers). Masking, one of:
          padding_mask (B, T) bool, self-attention: True = real token;
          mask: a Flax attention mask broadcastable to (B, heads, T, S), True = attend, of the
            form query_real & key_real (& causal), e.g. `nnx.make_attention_mask(q_real, k_real)`
            (SoftmaxAttention takes any mask; see `cottention_jax.attention_fn.padding_from_mask`).
        Padded (wholly masked) query rows output the projection of zero. positions (B, T) int:
        rotary positions (default: the index among the real tokens; in decode mode counted on from
        the real tokens already in the cache, so decoding equals the parallel pass).
        deterministic / rngs: the value dropout (`dropout_rate`), as in Flax.
        is_causal: accepted for Flax's call; True needs a layer built with causal=True.
        decode: continue from the cache (causal layers; `init_cache` first); prefill (with
        decode): restart the cache from these tokens instead of continuing it.
        """
        if inputs_q.ndim != 3 or inputs_q.shape[-1] != self.in_features:
            raise ValueError(
                f"inputs_q must have shape (batch, seq, {self.in_features}); got inputs_q.shape={inputs_q.shape}"
            )
        if inputs_k is None and inputs_v is not None:
            raise ValueError("inputs_v needs inputs_k (pass the same array as inputs_k for keys = values)")
        cross = inputs_k is not None and inputs_k is not inputs_q
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        if (
            inputs_k.ndim != 3
            or inputs_k.shape[-1] != self.in_kv_features
            or inputs_v.ndim != 3
            or inputs_k.shape[0] != inputs_q.shape[0]
            or inputs_v.shape[:2] != inputs_k.shape[:2]
            or inputs_v.shape[-1] != self.in_kv_features
        ):
            raise ValueError(
                f"inputs_k and inputs_v must have shape (batch={inputs_q.shape[0]}, kv_seq, "
                f"{self.in_kv_features}); got inputs_k.shape={inputs_k.shape}, "
                f"inputs_v.shape={inputs_v.shape}"
            )
        if sow_weights:
            raise ValueError(
                f"sow_weights=True: {type(self).__name__} does not sow attention weights "
                "(cosine attention never forms them)"
            )
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
            raise ValueError(
                "padding_mask is for self-attention; with keys of another length pass mask= "
                "(B, 1, T, S), e.g. nnx.make_attention_mask(query_real, key_real)"
            )
        if masked and decode:
            raise ValueError("decode=True takes padding_mask (B, T), not mask= or keys of another length")
        q, k, v = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)  # (B, T|S, heads, D)
        if self.rotary_dim:
            if cross and masked:
                raise ValueError(
                    "rotary embeddings (rotary_dim > 0) need self-attention: the keys of another "
                    "sequence have no positions of their own here"
                )
            if positions is None and decode:  # continue from the real tokens already in the cache
                offset = None if prefill else self._tokens_seen()  # (B,)
                positions = positions_from_mask(padding_mask, q.shape[:2], offset)
            elif positions is None:  # the index among real tokens (those some query attends to, under a mask)
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

    @abc.abstractmethod
    def _attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        padding_mask: jax.Array | None,
        decode: bool,
        prefill: bool,
        inputs: jax.Array,
    ) -> jax.Array:
        """Self-attention of q (B, T, H, D) over k, v (B, T, KV, D|Dv) -> (B, T, H, Dv).

        padding_mask (B, T) or None; decode: continue from the layer's cache (prefill: restart it
        from these tokens); inputs (B, T, in_features): the query-side input (for gates).
        """

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
            raise ValueError(f"a causal layer attends over its own sequence: keys of length {s} for {t} queries")
        out = self._attend(q, k, v, key_real, False, False, inputs)
        return jnp.where(query_real[:, :, None, None], out, 0).astype(out.dtype)

    def _attend_cross(self, q, k, v, query_mask, key_mask):
        raise ValueError(f"{type(self).__name__} does not take cross-attention or a mask= (use padding_mask)")

    def _tokens_seen(self) -> jax.Array:
        """(B,) int32: the real tokens in the decode cache (since the last prefill or init_cache), the
        rotary position of the next real token. Raises as `_check_cache` before init_cache."""
        raise NotImplementedError(
            f"{type(self).__name__} does not count the tokens in its decode cache: "
            "implement _tokens_seen, or pass positions= in decode mode"
        )

    def _check_cache(self, cache: nnx.Cache | None) -> nnx.Cache:
        """`cache` itself once init_cache has made it; before, a ValueError saying to call it."""
        if cache is None:
            raise ValueError(
                f"{type(self).__name__}: call init_cache((batch, max_length, features)) before calling with decode=True"
            )
        return cache
