"""Pieces shared by the models: the attention switch, the feed-forward block, preset lookup."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cottention_jax import ops, softmax_ops
from cottention_jax import recurrent_softmax as rs
from cottention_jax.layers import CosineAttention, SoftmaxAttention
from cottention_jax.rnn_attention import RecurrentSoftmaxAttention

__all__ = ["ATTENTION_TYPES", "REMAT_MODES", "FeedForward", "attention_names", "check_model_config", "make_attention",
           "preset", "remat_layer"]

ATTENTION_TYPES = {"cosine": CosineAttention, "softmax": SoftmaxAttention}

# model.remat: what each transformer layer keeps for the backward pass
#   "none"  everything (no recomputation); "block": only the layer's inputs (all of it recomputed);
#   "dots": the outputs of the weight matmuls (projections, MLP), the rest (attention internals,
#   norms, activations) recomputed
REMAT_MODES = ("none", "block", "dots")


def attention_names() -> tuple[str, ...]:
    """Every value the models' `attention=` switch accepts: "cosine", "softmax", and the
    recurrent-softmax variants of `cottention_jax.recurrent_softmax.VARIANTS` (causal models only)."""
    return tuple(ATTENTION_TYPES) + tuple(sorted(rs.VARIANTS))


def check_model_config(config, *, causal: bool) -> None:
    """The checks every model config shares: head split, attention name (causal-only variants need causal),
    implementation per attention (cosine: ops.IMPLEMENTATIONS, softmax: softmax_ops.IMPLEMENTATIONS,
    recurrent variants: None only)."""
    if config.d_model % config.num_heads:
        raise ValueError(f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})")
    allowed = attention_names() if causal else tuple(ATTENTION_TYPES)
    if config.attention not in allowed:
        raise ValueError(f"attention must be one of {allowed}; got {config.attention!r}")
    impls = {"cosine": ops.IMPLEMENTATIONS, "softmax": softmax_ops.IMPLEMENTATIONS}.get(config.attention, ())
    if config.implementation is not None and config.implementation not in impls:
        raise ValueError(f"implementation for attention={config.attention!r} must be one of {(None, *impls)}; "
                         f"got {config.implementation!r}")
    if config.remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}; got {config.remat!r}")
    if isinstance(config.loss_chunk, bool) or not isinstance(config.loss_chunk, int) or config.loss_chunk < 0:
        raise ValueError(f"loss_chunk must be an int >= 0 (positions per cross-entropy chunk, 0: the whole "
                         f"batch at once); got {config.loss_chunk!r}")


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


def remat_layer(fn, remat: str):
    """`fn(layer, x, ...)` under nnx.remat as `remat` says ("none": fn itself; see REMAT_MODES).

    The layer's variables (dropout rng counts included) go in and out through
    nnx.remat, so the recomputation draws the same dropout masks as the forward pass.
    """
    if remat == "none":
        return fn
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}; got {remat!r}")
    policy = None if remat == "block" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return nnx.remat(fn, policy=policy)
