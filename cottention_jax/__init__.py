"""cottention-jax: cosine attention (Cottention) and softmax attention as an RNN, in JAX.

The functional op is `cosine_attention`; `cosine_attention_step` is one RNN step.
The softmax baseline's op is `softmax_attention` (flash attention on GPU; its
implementations are `SOFTMAX_IMPLEMENTATIONS`, picked in `cottention_jax.softmax_ops`).
Flax NNX layers: `CosineAttention`, `SoftmaxAttention`. Models live in
`cottention_jax.models` (GPT, Bert), decoding in `cottention_jax.decoding`.
"""

from cottention_jax.layers import CosineAttention, SoftmaxAttention
from cottention_jax.ops import (
    IMPLEMENTATIONS,
    STABILIZE_MODES,
    CosineAttentionState,
    cosine_attention,
    cosine_attention_step,
    default_implementation,
    init_cosine_attention_state,
)
from cottention_jax.softmax_ops import IMPLEMENTATIONS as SOFTMAX_IMPLEMENTATIONS
from cottention_jax.softmax_ops import softmax_attention

__version__ = "0.1.0"

__all__ = [
    "CosineAttention",
    "SoftmaxAttention",
    "IMPLEMENTATIONS",
    "STABILIZE_MODES",
    "CosineAttentionState",
    "cosine_attention",
    "cosine_attention_step",
    "default_implementation",
    "init_cosine_attention_state",
    "SOFTMAX_IMPLEMENTATIONS",
    "softmax_attention",
]
