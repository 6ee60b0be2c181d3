"""`CosineAttention`: multi-head cosine attention (Cottention) as a Flax NNX layer.

Training and prompts use `cottention_jax.cosine_attention` (the parallel form); decode mode
carries a `CosineAttentionState` per layer (d x d per head: memory constant in the number of
tokens) and advances it one RNN step per token.
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype

from cottention_jax.attention_fn import cosine_cross_attention
from cottention_jax.layers.projected import ProjectedAttention
from cottention_jax.ops import (
    CosineAttentionState,
    cosine_attention,
    cosine_attention_step,
    init_cosine_attention_state,
)

__all__ = ["STABILIZERS", "CosineAttention", "CosineImplementation", "Stabilize", "Stabilizer"]

# the names cottention_jax.ops accepts (ops.STABILIZE_MODES, ops.IMPLEMENTATIONS; a test keeps them equal)
Stabilize = Literal["value", "query"]
CosineImplementation = Literal["reference", "xla", "pallas"]

# the exponent p of the factor max(n, 1)^-p: "learned" p = sigmoid(m), m a parameter per head (the
# paper's); "none" p = 0 (no factor); "length" p = 1 (divide by the length). The fixed ones pass the
# op m = -200 / +200, whose float32 sigmoid is exactly 0 / 1 (finite, so checkpoints take it), held
# in a non-Param variable (nothing to train).
Stabilizer = Literal["learned", "none", "length"]
STABILIZERS: tuple[str, ...] = get_args(Stabilizer)
_FIXED_M = {"none": -200.0, "length": 200.0}


class CosineAttention(ProjectedAttention):
    """Multi-head cosine attention (Cottention) as a Flax NNX module.

    Arguments beyond those of `ProjectedAttention` (the projections, rotary, dropout, decode):
      stabilizer_init: initial raw stabilizer m per head (0.5 as in the paper); values are scaled
        by max(n, 1) ** -sigmoid(m).
      stabilize: "value" or "query" (see `cottention_jax.cosine_attention`).
      stabilizer: "learned" (p = sigmoid(m), m trained; the paper's), "none" (p = 0: no factor) or
        "length" (p = 1: divide by n). The fixed ones keep `stabilizer` as a plain nnx.Variable
        holding m = -200 / +200 (float32 sigmoid exactly 0 / 1), which the optimizer (nnx.Param) leaves alone.
      implementation: passed to `cosine_attention` (None picks per backend).
      interpret: passed to `cosine_attention` (run its Pallas kernels in interpret mode, on CPU).
      sequence_axis: passed to `cosine_attention` outside decode mode: under a mesh (`jax.set_mesh`)
        with this axis, the sequence is split over it (`cottention_jax.parallel`).

    Parameters: the projections of `nnx.MultiHeadAttention` plus one `stabilizer` (heads,)
    (a Param for stabilizer="learned", a constant Variable otherwise).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cottention_jax import CosineAttention
    >>> attn = CosineAttention(num_heads=4, in_features=32, causal=True, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 32))                          # (batch, tokens, features)
    >>> attn(x).shape
    (2, 10, 32)
    >>> attn.stabilizer.shape                              # one per head
    (4,)

    Padding: `padding_mask` (B, T), True = real token; padded rows output the projection of zero.

    >>> real = jnp.arange(10) < jnp.array([[10], [6]])     # the second row has 6 real tokens
    >>> attn(x, padding_mask=real).shape
    (2, 10, 32)

    Decoding: the cache is a d x d state per head, whatever the number of tokens.

    >>> attn.init_cache((2, 1000, 32))                     # (batch, max_length, features)
    >>> attn.cached_kv.shape                               # (batch, heads, head_dim, head_dim)
    (2, 4, 8, 8)
    >>> prompt = attn(x, decode=True, prefill=True)        # the parallel form over the prompt
    >>> attn(x[:, :1], decode=True).shape                  # then one RNN step per token
    (2, 1, 32)
    """

    cached_kv: nnx.Cache | None  # (B, heads, head_dim, head_dim) float32, after init_cache
    cached_count: nnx.Cache | None  # (B,) real tokens folded into the state

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        *,
        stabilizer_init: float = 0.5,
        stabilize: Stabilize = "value",
        stabilizer: Stabilizer = "learned",
        implementation: CosineImplementation | None = None,
        interpret: bool = False,
        sequence_axis: str | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        super().__init__(
            num_heads,
            in_features,
            qkv_features,
            out_features,
            num_kv_heads,
            param_dtype=param_dtype,
            rngs=rngs,
            **kwargs,
        )
        if stabilizer not in STABILIZERS:
            raise ValueError(f"stabilizer must be one of {STABILIZERS}; got {stabilizer!r}")
        if stabilizer == "learned":
            self.stabilizer: nnx.Variable[jax.Array] = nnx.Param(jnp.full((num_heads,), stabilizer_init, param_dtype))
        else:  # (heads,) m = -200 or +200: a constant, not a parameter
            self.stabilizer = nnx.Variable(jnp.full((num_heads,), _FIXED_M[stabilizer], param_dtype))
        self.stabilizer_kind = stabilizer
        self.stabilize, self.implementation, self.interpret = stabilize, implementation, interpret
        self.sequence_axis = sequence_axis
        self.cached_kv = nnx.data(None)
        self.cached_count = nnx.data(None)

    def init_cache(self, input_shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> None:
        """Empty RNN state for a batch of input_shape[0]; its size does not depend on the length.

        `dtype` is accepted for nnx.MultiHeadAttention compatibility; the state is float32.
        """
        del dtype
        state = init_cosine_attention_state(input_shape[0], self.num_heads, self.head_dim, self.head_dim)
        self.cached_kv = nnx.Cache(state.kv)
        self.cached_count = nnx.Cache(state.count)

    def _tokens_seen(self) -> jax.Array:
        return self._check_cache(self.cached_count)[...]

    def _attend(self, q, k, v, padding_mask, decode, prefill, inputs):
        del inputs
        stab = self.stabilizer[...]
        if not decode:
            return cosine_attention(
                q,
                k,
                v,
                stab,
                causal=self.causal,
                padding_mask=padding_mask,
                stabilize=self.stabilize,
                implementation=self.implementation,
                interpret=self.interpret,
                sequence_axis=self.sequence_axis,
            )
        self._check_cache(self.cached_kv)
        state = CosineAttentionState(self.cached_kv[...], self.cached_count[...])
        if prefill:  # restart from the empty state
            state = init_cosine_attention_state(q.shape[0], self.num_heads, self.head_dim, self.head_dim)
        if q.shape[1] == 1:  # one token: one RNN step, no chunk padding
            mask_t = None if padding_mask is None else padding_mask[:, 0]
            out, state = cosine_attention_step(
                state, q[:, 0], k[:, 0], v[:, 0], stab, padding_mask_t=mask_t, stabilize=self.stabilize
            )
            out = out[:, None]
        else:  # a prompt: the parallel form, continuing from and returning the state
            out, state = cosine_attention(
                q,
                k,
                v,
                stab,
                causal=True,
                padding_mask=padding_mask,
                initial_state=state,
                return_state=True,
                stabilize=self.stabilize,
                implementation=self.implementation,
                interpret=self.interpret,
            )
        self.cached_kv[...], self.cached_count[...] = state.kv, state.count
        return out

    def _attend_cross(self, q, k, v, query_mask, key_mask):
        """Bidirectional attention of T queries over S keys (`attention_fn.cosine_cross_attention`)."""
        return cosine_cross_attention(q, k, v, self.stabilizer[...], query_mask=query_mask, key_mask=key_mask)
