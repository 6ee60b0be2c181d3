"""Pieces shared by the models: their common config fields, the attention switch, the feed-forward
block, preset lookup.

Config fields are declared once: `AttentionConfig` (the attention of every block) and
`TransformerConfig` (adds the sizes, norms, dtypes and training options both models have);
`GPTConfig` and `BertConfig` extend it with their own fields and defaults. The fields stay
flat (`config.attention`, `config.num_heads`, ...): keyword construction, `--set
model.attention=softmax` and saved config dicts are those of before the split.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import checkify

from cottention_jax import ops, softmax_ops
from cottention_jax import recurrent_softmax as rs
from cottention_jax.layers import CosineAttention, RecurrentSoftmaxAttention, SoftmaxAttention
from cottention_jax.layers.cosine import STABILIZERS, CosineImplementation, Stabilize, Stabilizer
from cottention_jax.layers.softmax import SoftmaxImplementation

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_TYPES",
    "REMAT_MODES",
    "AttentionConfig",
    "AttentionKind",
    "FeedForward",
    "Remat",
    "TransformerConfig",
    "activation_fn",
    "attention_names",
    "check_ids",
    "check_model_config",
    "embed_ids",
    "make_attention",
    "preset",
    "remat_layer",
]

ATTENTION_TYPES = {"cosine": CosineAttention, "softmax": SoftmaxAttention}

# model.remat: what each transformer layer keeps for the backward pass
#   "none"  everything (no recomputation); "block": only the layer's inputs (all of it recomputed);
#   "dots": the outputs of the weight matmuls (projections, MLP), the rest (attention internals,
#   norms, activations) recomputed
Remat = Literal["none", "block", "dots"]
REMAT_MODES: tuple[str, ...] = get_args(Remat)

# every name the attention switch takes: the layers' and the recurrent-softmax VARIANTS' (causal
# only); a test keeps this equal to attention_names()
AttentionKind = Literal[
    "cosine",
    "softmax",
    "exp",
    "exp-detached",
    "exp-gate",
    "exp-l2norm",
    "exp-layernorm",
    "exp-none",
    "exp-position",
    "exp-rms",
    "linear-cosine",
    "linear-elu",
    "linear-relu",
    "taylor1",
    "taylor2",
    "taylor2-detached",
    "taylor2-detached-gate",
    "taylor2-gate",
    "taylor2-l2norm",
    "taylor2-layernorm",
    "taylor2-none",
    "taylor2-position",
    "taylor2-rms",
    "taylor3",
    "taylor4",
]
Implementation = CosineImplementation | SoftmaxImplementation


def attention_names() -> tuple[str, ...]:
    """Every value the models' `attention=` switch accepts: "cosine", "softmax", and the
    recurrent-softmax variants of `cottention_jax.recurrent_softmax.VARIANTS` (causal models only)."""
    return tuple(ATTENTION_TYPES) + tuple(sorted(rs.VARIANTS))


# fields that are counts (>= 1 when the config has them) and flags (bools)
_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "num_layers",
    "d_model",
    "num_heads",
    "ff_dim",
    "max_len",
    "type_vocab_size",
    "num_labels",
)
_BOOL_FIELDS = ("interpret", "tie_embeddings", "checkify_ids")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """The attention layer of every block: which one (`attention`), its heads and its options.

    The base of GPTConfig and BertConfig (through TransformerConfig); `make_attention(config, ...)`
    builds the layer from it, passing each layer type only the options it takes.
    """

    d_model: int = 1024
    num_heads: int = 16
    num_kv_heads: int | None = None  # None: as num_heads; fewer: grouped-query attention
    attention: AttentionKind = "cosine"  # see attention_names()
    stabilizer_init: float = 0.5  # cosine: initial raw stabilizer per head
    stabilize: Stabilize = "value"  # cosine: "value" or "query" (cottention_jax.cosine_attention)
    stabilizer: Stabilizer = "learned"  # cosine: exponent p of n^-p: "learned" sigmoid(m), "none" 0, "length" 1
    implementation: Implementation | None = None  # attention implementation, per attention (None: per backend)
    interpret: bool = False  # Pallas kernels in interpret mode (CPU tests)
    sequence_axis: str | None = None  # mesh axis the sequence is split over (cosine; see parallel.py)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def attention_config(self) -> AttentionConfig:
        """The attention fields alone, as an AttentionConfig (of a GPTConfig or BertConfig too)."""
        return AttentionConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AttentionConfig)})


@dataclasses.dataclass(frozen=True)
class TransformerConfig(AttentionConfig):
    """The fields GPTConfig and BertConfig share beyond the attention's (their defaults: GPT's)."""

    vocab_size: int = 50257
    num_layers: int = 20
    ff_dim: int = 3072
    activation: str = "gelu_tanh"  # of the MLP: ACTIVATIONS ("gelu": exact)
    max_len: int = 2048  # training context (GPT: default size of softmax KV caches)
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: Remat = "none"  # per block: "none", "block" or "dots" (REMAT_MODES)
    loss_chunk: int = 0  # positions per chunk of the training cross-entropy (0: all at once)
    checkify_ids: bool = False  # under jit, ids get a checkify check (see GPT.hidden, Bert)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_value_ranges(config) -> None:
    """Sizes >= 1, a dropout rate in [0, 1), finite stabilizer init, positive eps and rope base, dtypes."""
    name = type(config).__name__
    for field in _POSITIVE_INT_FIELDS:
        if hasattr(config, field) and not (_is_int(getattr(config, field)) and getattr(config, field) >= 1):
            raise ValueError(f"{name}.{field} must be an int >= 1; got {getattr(config, field)!r}")
    kv = config.num_kv_heads
    if kv is not None and not (_is_int(kv) and kv >= 1 and config.num_heads % kv == 0):
        raise ValueError(
            f"{name}.num_kv_heads must be None or an int >= 1 dividing num_heads ({config.num_heads}); got {kv!r}"
        )
    for field in _BOOL_FIELDS:
        if hasattr(config, field) and not isinstance(getattr(config, field), bool):
            raise ValueError(f"{name}.{field} must be a bool; got {getattr(config, field)!r}")
    rate = config.dropout_rate
    if not (_is_number(rate) and 0.0 <= rate < 1.0):
        raise ValueError(f"{name}.dropout_rate must be in [0, 1); got {rate!r}")
    if not (_is_number(config.stabilizer_init) and math.isfinite(config.stabilizer_init)):
        raise ValueError(f"{name}.stabilizer_init must be a finite number; got {config.stabilizer_init!r}")
    for field in ("layer_norm_eps", "rope_base"):
        value = getattr(config, field, 1.0)
        if not (_is_number(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}.{field} must be a finite number > 0; got {value!r}")
    if hasattr(config, "rotary_dim"):
        head_dim = config.d_model // config.num_heads
        r = config.rotary_dim
        if not (_is_int(r) and 0 <= r <= head_dim and r % 2 == 0):
            raise ValueError(f"{name}.rotary_dim must be an even int in [0, head_dim={head_dim}]; got {r!r}")
    for field in ("dtype", "param_dtype"):
        try:
            floating = jnp.issubdtype(jnp.dtype(getattr(config, field)), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise ValueError(
                f"{name}.{field} must be the name of a floating dtype (e.g. 'float32', 'bfloat16'); "
                f"got {getattr(config, field)!r}"
            )
    if config.stabilize not in ops.STABILIZE_MODES:
        raise ValueError(f"{name}.stabilize must be one of {ops.STABILIZE_MODES}; got {config.stabilize!r}")
    if config.stabilizer not in STABILIZERS:
        raise ValueError(f"{name}.stabilizer must be one of {STABILIZERS}; got {config.stabilizer!r}")


def check_model_config(config, *, causal: bool) -> None:
    """The checks every model config shares, each a ValueError naming the field: sizes (>= 1), the
    dropout rate ([0, 1)), finite stabilizer init, positive eps, dtypes, head split, attention name
    (causal-only variants need causal), implementation per attention (cosine: ops.IMPLEMENTATIONS,
    softmax: softmax_ops.IMPLEMENTATIONS, recurrent variants: None only), remat and loss_chunk."""
    for field in ("num_heads", "d_model"):
        if not (_is_int(getattr(config, field)) and getattr(config, field) >= 1):
            raise ValueError(f"{type(config).__name__}.{field} must be an int >= 1; got {getattr(config, field)!r}")
    if config.d_model % config.num_heads:
        raise ValueError(f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})")
    allowed = attention_names() if causal else tuple(ATTENTION_TYPES)
    if config.attention not in allowed:
        raise ValueError(f"attention must be one of {allowed}; got {config.attention!r}")
    impls = {"cosine": ops.IMPLEMENTATIONS, "softmax": softmax_ops.IMPLEMENTATIONS}.get(config.attention, ())
    if config.implementation is not None and config.implementation not in impls:
        raise ValueError(
            f"implementation for attention={config.attention!r} must be one of {(None, *impls)}; "
            f"got {config.implementation!r}"
        )
    if config.remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}; got {config.remat!r}")
    if isinstance(config.loss_chunk, bool) or not isinstance(config.loss_chunk, int) or config.loss_chunk < 0:
        raise ValueError(
            f"loss_chunk must be an int >= 0 (positions per cross-entropy chunk, 0: the whole "
            f"batch at once); got {config.loss_chunk!r}"
        )
    _check_value_ranges(config)
    activation_fn(config.activation, f"{type(config).__name__}.activation")


def _is_traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_ids(
    ids: jax.Array, upper: int, name: str, padding_mask: jax.Array | None = None, *, checkify_ids: bool = False
) -> None:
    """ids must lie in [0, upper) at the real (unpadded) positions; what is at padded ones is never read.

    Concrete ids (an eager call): a ValueError naming `name`, the range, the first bad value and
    where it is. Traced ids (under jit) cannot be read while tracing: with `checkify_ids` the check
    is a `jax.experimental.checkify.check` (run the jitted function under `checkify.checkify` and
    call `err.throw()`); without it nothing is raised, and `embed_ids` gives out-of-range ids
    (negative ones too) NaN embeddings, so the rows they reach are NaN rather than another token's.
    """
    ok = (ids >= 0) & (ids < upper)
    if padding_mask is not None:
        ok = ok | ~padding_mask
    if not _is_traced(ids, padding_mask):
        ok_np = np.asarray(ok)
        if not ok_np.all():
            where = tuple(int(i) for i in np.argwhere(~ok_np)[0])
            raise ValueError(
                f"{name} must be ids in [0, {upper}); got {int(np.asarray(ids)[where])} at "
                f"position {where} ({name}.shape={tuple(ids.shape)})"
            )
    elif checkify_ids:
        bad = jnp.where(ok, 0, ids).ravel()[jnp.argmin(ok.ravel())]
        checkify.check(jnp.all(ok), f"{name} must be ids in [0, {upper}); got {{bad}}", bad=bad)


def embed_ids(
    embed: nnx.Embed, ids: jax.Array, name: str, padding_mask: jax.Array | None = None, *, checkify_ids: bool = False
) -> jax.Array:
    """`embed(ids)` after `check_ids`; padded positions read id 0, and an out-of-range id (a negative
    one too, which jnp.take would otherwise wrap to the end of the table) reads a NaN row."""
    n = embed.num_embeddings
    check_ids(ids, n, name, padding_mask, checkify_ids=checkify_ids)
    if padding_mask is not None:
        ids = jnp.where(padding_mask, ids, 0)
    return embed(jnp.where(ids < 0, n, ids))


# per layer type, the constructor options that are its own (the rest are ProjectedAttention's, which
# every layer takes); make_attention drops the options of the other types
_LAYER_OPTIONS: dict[type, tuple[str, ...]] = {
    CosineAttention: ("stabilizer_init", "stabilize", "stabilizer", "implementation", "interpret", "sequence_axis"),
    SoftmaxAttention: ("implementation", "interpret"),
    RecurrentSoftmaxAttention: ("variant", "form"),
}
_ATTENTION_FIELDS = tuple(f.name for f in dataclasses.fields(AttentionConfig))


def make_attention(kind: str | AttentionConfig, **kwargs) -> nnx.Module:
    """Build the attention layer named `kind` (or that an AttentionConfig describes) with layer kwargs.

    "cosine" -> CosineAttention, "softmax" -> SoftmaxAttention, a VARIANTS name (e.g.
    "taylor2", "taylor2-l2norm", "linear-elu") -> RecurrentSoftmaxAttention(variant=kind).
    Each layer gets only the options it takes: those of another layer type (e.g. `stabilize`
    for "softmax") are dropped, so one set of kwargs serves every kind. With an AttentionConfig,
    its fields give the options (num_heads, num_kv_heads, ...; in_features defaults to d_model)
    and kwargs add the rest (causal, rotary_dim, dtype, rngs, ...).
    """
    if isinstance(kind, AttentionConfig):
        config = kind.attention_config()
        kwargs = {
            "in_features": config.d_model,
            **{name: getattr(config, name) for name in _ATTENTION_FIELDS if name not in ("attention", "d_model")},
            **kwargs,
        }
        kind = config.attention
    if kind in ATTENTION_TYPES:
        cls = ATTENTION_TYPES[kind]
    elif kind in rs.VARIANTS:
        if not kwargs.get("causal", False):
            raise ValueError(f"attention={kind!r} is causal only (a decoder); BERT needs 'cosine' or 'softmax'")
        cls, kwargs = RecurrentSoftmaxAttention, {**kwargs, "variant": kind}
    else:
        raise ValueError(f"attention must be one of {attention_names()}; got {kind!r}")
    others = {name for options in _LAYER_OPTIONS.values() for name in options} - set(_LAYER_OPTIONS[cls])
    return cls(**{name: value for name, value in kwargs.items() if name not in others})


# model.activation: the MLP's nonlinearity (and BERT's MLM head's). "gelu_tanh" is the tanh
# approximation (GPT-J's "gelu_new"), "gelu" the exact erf form (BERT's "gelu").
ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation_fn(name: str, what: str = "activation"):
    """ACTIVATIONS[name], or a ValueError naming `what` and the choices."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{what} must be one of {tuple(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]


class FeedForward(nnx.Module):
    """Linear(d -> ff), activation (GELU), Linear(ff -> d): (B, T, d) -> (B, T, d)."""

    def __init__(
        self,
        d_model: int,
        ff_dim: int,
        *,
        activation: str = "gelu_tanh",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        activation_fn(activation)
        self.activation = activation
        self.fc_in = nnx.Linear(d_model, ff_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc_out = nnx.Linear(ff_dim, d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc_out(activation_fn(self.activation)(self.fc_in(x)))


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
