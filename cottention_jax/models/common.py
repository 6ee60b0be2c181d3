"""Pieces shared by the models: the attention switch, the feed-forward block, preset lookup."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cottention_jax import recurrent_softmax as rs
from cottention_jax.layers import CosineAttention, SoftmaxAttention
from cottention_jax.rnn_attention import RecurrentSoftmaxAttention

__all__ = ["ATTENTION_TYPES", "FeedForward", "attention_names", "check_model_config", "make_attention", "preset",
           "weighted_cross_entropy"]

ATTENTION_TYPES = {"cosine": CosineAttention, "softmax": SoftmaxAttention}


def attention_names() -> tuple[str, ...]:
    """Every value the models' `attention=` switch accepts: "cosine", "softmax", and the
    recurrent-softmax variants of `cottention_jax.recurrent_softmax.VARIANTS` (causal models only)."""
    return tuple(ATTENTION_TYPES) + tuple(sorted(rs.VARIANTS))


def check_model_config(config, *, causal: bool) -> None:
    """The checks every model config shares: head split, attention name (causal-only variants need causal)."""
    if config.d_model % config.num_heads:
        raise ValueError(f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})")
    allowed = attention_names() if causal else tuple(ATTENTION_TYPES)
    if config.attention not in allowed:
        raise ValueError(f"attention must be one of {allowed}; got {config.attention!r}")


def make_attention(kind: str, **kwargs) -> nnx.Module:
    """Build the attention layer named `kind` with layer kwargs.

    "cosine" -> CosineAttention, "softmax" -> SoftmaxAttention, a VARIANTS name (e.g.
    "taylor2", "taylor2-l2norm", "linear-elu") -> RecurrentSoftmaxAttention(variant=kind).
    """
    if kind in ATTENTION_TYPES:
        return ATTENTION_TYPES[kind](**kwargs)
    if kind in rs.VARIANTS:
        if not kwargs.get("causal", False):
            raise ValueError(f"attention={kind!r} is causal only (a decoder); BERT needs 'cosine' or 'softmax'")
        return RecurrentSoftmaxAttention(variant=kind, **kwargs)
    raise ValueError(f"attention must be one of {attention_names()}; got {kind!r}")


class FeedForward(nnx.Module):
    """Linear(d -> ff), GELU, Linear(ff -> d): (B, T, d) -> (B, T, d)."""

    def __init__(self, d_model: int, ff_dim: int, *, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.fc_in = nnx.Linear(d_model, ff_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc_out = nnx.Linear(ff_dim, d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc_out(jax.nn.gelu(self.fc_in(x)))


def preset(presets: dict[str, Any], name: str, **overrides):
    """presets[name] with `overrides` applied through dataclasses.replace."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
    return dataclasses.replace(presets[name], **overrides)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None):
    """Mean cross-entropy (nats) over weighted positions, and the sums behind it.

    logits (..., V), labels (...) int, weights (...) or None (all 1). Returns
    (loss_sum / max(count, 1), {"loss_sum", "correct", "count"}): the sums let an
    evaluation over many batches divide once, so padding (weight 0) never counts.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    weights = jnp.ones(losses.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = {"loss_sum": (losses * weights).sum(), "correct": (correct * weights).sum(), "count": weights.sum()}
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), sums
