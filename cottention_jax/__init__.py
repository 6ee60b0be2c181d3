"""cottention-jax: cosine attention (Cottention) and softmax attention as an RNN, in JAX.

The functional op is `cosine_attention`; `cosine_attention_step` is one RNN step.
"""

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
    "IMPLEMENTATIONS",
    "STABILIZE_MODES",
    "CosineAttentionState",
    "cosine_attention",
    "cosine_attention_step",
    "default_implementation",
    "init_cosine_attention_state",
]
