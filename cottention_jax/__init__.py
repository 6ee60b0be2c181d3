"""cottention-jax: cosine attention (Cottention) and softmax attention as an RNN, in JAX.

The functional op is `cosine_attention`; `cosine_attention_step` is one RNN step.
The softmax baseline's op is `softmax_attention` (flash attention on GPU; its
implementations are `SOFTMAX_IMPLEMENTATIONS`, picked in `cottention_jax.softmax_ops`).
Flax NNX layers: `CosineAttention`, `SoftmaxAttention` (drop-ins for `nnx.MultiHeadAttention`),
and `cosine_attention_fn` for Flax modules that take an `attention_fn`. Models live in
`cottention_jax.models` (GPT, Bert), decoding in `cottention_jax.decoding`; `load_model(workdir)`
and `load_tokenizer(workdir)` load a trained run's model and tokenizer (`cottention_jax.inference`),
and `cottention_jax.interop` converts Hugging Face (PyTorch) weights to and from these models.
"""

from cottention_jax.attention_fn import cosine_attention_fn
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


def __getattr__(name: str):
    # inference pulls in Orbax: imported on first use, so `import cottention_jax` stays light
    if name in ("load_model", "load_tokenizer"):
        from cottention_jax import inference  # noqa: PLC0415

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CosineAttention",
    "SoftmaxAttention",
    "cosine_attention_fn",
    "IMPLEMENTATIONS",
    "STABILIZE_MODES",
    "CosineAttentionState",
    "cosine_attention",
    "cosine_attention_step",
    "default_implementation",
    "init_cosine_attention_state",
    "SOFTMAX_IMPLEMENTATIONS",
    "softmax_attention",
    "load_model",
    "load_tokenizer",
]
