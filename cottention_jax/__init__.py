"""cottention-jax: cosine attention (Cottention) and softmax attention as an RNN, in JAX.

The functional op is `cosine_attention`; `cosine_attention_step` is one RNN step.
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
]
