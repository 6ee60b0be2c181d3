"""Pieces shared by the models: the attention switch, the feed-forward block, preset lookup."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cottention_jax.layers import CosineAttention, SoftmaxAttention

__all__ = ["ATTENTION_TYPES", "FeedForward", "attention_names", "make_attention", "preset"]

ATTENTION_TYPES = {"cosine": CosineAttention, "softmax": SoftmaxAttention}


def attention_names() -> tuple[str, ...]:
    """Every value the models' `attention=` switch accepts."""
    return tuple(ATTENTION_TYPES)


def make_attention(kind: str, **kwargs) -> nnx.Module:
    """Build the attention layer named `kind` ("cosine" or "softmax") with layer kwargs."""
    if kind not in ATTENTION_TYPES:
        raise ValueError(f"attention must be one of {attention_names()}; got {kind!r}")
    return ATTENTION_TYPES[kind](**kwargs)


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
