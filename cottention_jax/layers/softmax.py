"""`SoftmaxAttention`: multi-head softmax attention, the baseline, as a Flax NNX layer.

Training and prompts use `cottention_jax.softmax_attention` (flash attention where the backend
has it); decode mode keeps a key/value cache of max_length positions.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype

from cottention_jax import softmax_ops
from cottention_jax.attention_fn import mask_as_bool
from cottention_jax.layers.projected import ProjectedAttention

__all__ = ["SoftmaxAttention", "SoftmaxImplementation"]

# the names softmax_ops accepts (softmax_ops.IMPLEMENTATIONS; a test keeps them equal)
SoftmaxImplementation = Literal["xla", "cudnn", "pallas"]


class SoftmaxAttention(ProjectedAttention):
    """Multi-head softmax attention, the baseline: `cottention_jax.softmax_ops.softmax_attention`.

    Same constructor and call as CosineAttention, minus its cosine-only arguments
    (stabilizer_init, stabilize, sequence_axis: `models.make_attention` passes each layer
    only its own). Padded query positions output zero, as in CosineAttention.

      implementation: passed to `softmax_attention`: "xla" (dense scores), "cudnn" or "pallas"
        (flash, linear memory); None picks the fastest that applies on the backend.
      interpret: passed to `softmax_attention` (the "pallas" kernel in interpret mode, on CPU).

    Decode mode attends over the key/value cache with a dense mask (XLA), whatever implementation.
    A decode call that would write past the cache's max_length is refused (ValueError) when it runs
    eagerly, and a chunk longer than the cache always; under jit the index is not known while
    tracing and an overflowing step gives NaN outputs (`decoding.make_decode_step` and
    `make_decode_loop` check the concrete cache before they run).
    A sequence split over a mesh needs nothing here: XLA partitions the attention call.
    """

    cached_key: nnx.Cache | None  # (B, max_length, kv_heads, head_dim), after init_cache
    cached_value: nnx.Cache | None  # (B, max_length, kv_heads, head_dim)
    cache_mask: nnx.Cache | None  # (B, max_length) bool: slots holding a real token
    cache_index: nnx.Cache | None  # () int32: the next slot to write

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        *,
        implementation: SoftmaxImplementation | None = None,
        interpret: bool = False,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        if implementation is not None and implementation not in softmax_ops.IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {softmax_ops.IMPLEMENTATIONS} or None; got {implementation!r}"
            )
        super().__init__(num_heads, in_features, qkv_features, out_features, num_kv_heads, rngs=rngs, **kwargs)
        self.implementation, self.interpret = implementation, interpret
        self.cached_key = nnx.data(None)
        self.cached_value = nnx.data(None)
        self.cache_mask = nnx.data(None)
        self.cache_index = nnx.data(None)

    def init_cache(self, input_shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> None:
        """Key/value cache for input_shape = (batch, max_length, ...): grows with max_length."""
        b, length = input_shape[:2]
        shape = (b, length, self.num_kv_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
        self.cache_mask = nnx.Cache(jnp.zeros((b, length), bool))
        self.cache_index = nnx.Cache(jnp.array(0, jnp.int32))

    def _tokens_seen(self) -> jax.Array:
        return jnp.sum(self._check_cache(self.cache_mask)[...], axis=1, dtype=jnp.int32)  # real slots per row

    def _attend(self, q, k, v, padding_mask, decode, prefill, inputs):
        del inputs
        if not decode or prefill:  # the parallel (flash) form; padded query rows come back zero
            out = softmax_ops.softmax_attention(
                q,
                k,
                v,
                causal=self.causal,
                padding_mask=padding_mask,
                implementation=self.implementation,
                interpret=self.interpret,
            )
            if decode:
                self._restart_cache(k, v, padding_mask)
            return out
        b, t = q.shape[:2]
        real = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
        self._check_cache(self.cached_key)
        idx = self.cache_index[...]
        self._check_room(idx, t)
        keys = jax.lax.dynamic_update_slice(self.cached_key[...], k.astype(self.cached_key[...].dtype), (0, idx, 0, 0))
        values = jax.lax.dynamic_update_slice(
            self.cached_value[...], v.astype(self.cached_value[...].dtype), (0, idx, 0, 0)
        )
        seen = jax.lax.dynamic_update_slice(self.cache_mask[...], real, (0, idx))  # (B, L)
        # past the end, dynamic_update_slice would clamp and overwrite the newest slots: poison instead
        fits = idx + t <= keys.shape[1]
        # query j sits at slot idx + j and sees the real slots up to its own
        slots = jnp.arange(keys.shape[1])
        causal = slots[None, :] <= (idx + jnp.arange(t))[:, None]  # (T, L)
        mask = causal[None, None] & seen[:, None, None, :]  # (B, 1, T, L)
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
                raise ValueError(f"a causal layer attends over its own sequence: keys of length {s} for {t} queries")
            attend = attend & jnp.tril(jnp.ones((t, s), bool))
        out = jax.nn.dot_product_attention(q, k, v, mask=attend)
        return jnp.where(jnp.any(attend, axis=(1, 3))[:, :, None, None], out, 0).astype(q.dtype)

    def _check_room(self, index, new_tokens: int) -> None:
        """Refuse `new_tokens` written from slot `index` past the cache's end: always for a chunk longer
        than the cache, and for any overflow when the index is concrete (an eager call)."""
        length = self._check_cache(self.cached_key)[...].shape[1]
        used = None if isinstance(index, jax.core.Tracer) else int(index)
        if new_tokens > length or (used is not None and used + new_tokens > length):
            used_text = "" if used is None else f", {used} of them used"
            raise ValueError(
                f"{type(self).__name__}: the KV cache holds {length} positions{used_text}: "
                f"{new_tokens} more token(s) do not fit. Prefill with a larger max_length "
                "(decoding.prefill(model, prompt, max_length=...)) or init_cache with one"
            )

    def _restart_cache(self, k, v, padding_mask) -> None:
        """The cache holds exactly these T tokens: slots [0, T) written, the rest empty."""
        keys, values = self._check_cache(self.cached_key), self._check_cache(self.cached_value)
        mask, index = self._check_cache(self.cache_mask), self._check_cache(self.cache_index)
        b, t = k.shape[:2]
        length = keys[...].shape[1]
        if t > length:
            raise ValueError(
                f"the prompt ({t} tokens) is longer than the KV cache ({length} slots); "
                f"init_cache with max_length >= {t}"
            )
        real = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
        zeros = jnp.zeros_like(keys[...])
        keys[...] = jax.lax.dynamic_update_slice(zeros, k.astype(zeros.dtype), (0, 0, 0, 0))
        values[...] = jax.lax.dynamic_update_slice(zeros, v.astype(zeros.dtype), (0, 0, 0, 0))
        mask[...] = jnp.zeros((b, length), bool).at[:, :t].set(real)
        index[...] = jnp.array(t, jnp.int32)
