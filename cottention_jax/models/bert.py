"""BERT (post-LayerNorm encoder) with switchable attention, an MLM head and a classification head.

Embeddings: token + position + segment, LayerNorm, dropout. Positions count the real tokens of
            each row (config.positions "from_mask": left padding shifts nothing), or are 0..T-1
            whatever the padding ("absolute": transformers' BERT, which the converters set).
Layer:      x <- LN(x + Drop(Attn(x)));  x <- LN(x + Drop(MLP(x)))   (bidirectional attention)
MLM head:   Dense + GELU (config.activation) + LN, then logits tied to the token embedding, plus a bias.
Classifier: tanh(Dense(h_[CLS])) -> Dropout -> Dense(num_labels), [CLS] = first real token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from cottention_jax.layers import positions_from_mask
from cottention_jax.models.common import (
    FeedForward,
    TransformerConfig,
    activation_fn,
    check_model_config,
    embed_ids,
    make_attention,
    preset,
    remat_layer,
)

__all__ = ["Bert", "BertConfig", "BERT_POSITIONS", "BERT_PRESETS", "bert_config"]

# how position ids are numbered: among the real tokens of a row, or 0..T-1 (transformers' BERT)
BertPositions = Literal["from_mask", "absolute"]
BERT_POSITIONS: tuple[str, ...] = get_args(BertPositions)


@dataclasses.dataclass(frozen=True)
class BertConfig(TransformerConfig):
    """Hyper-parameters of `Bert`. Derive variants with `dataclasses.replace` (or `bert_config`).

    The attention fields are `AttentionConfig`'s, the other shared ones `TransformerConfig`'s;
    the defaults below are BERT-base's where they differ from GPT's.
    """

    vocab_size: int = 30522
    num_layers: int = 12
    d_model: int = 768
    num_heads: int = 12
    max_len: int = 512
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    num_labels: int = 2
    positions: BertPositions = "from_mask"  # BERT_POSITIONS; checkpoints of transformers: "absolute"

    def __post_init__(self):
        check_model_config(self, causal=False)
        if self.positions not in BERT_POSITIONS:
            raise ValueError(f"BertConfig.positions must be one of {BERT_POSITIONS}; got {self.positions!r}")


BERT_PRESETS = {
    "tiny": BertConfig(vocab_size=256, num_layers=2, d_model=64, num_heads=4, ff_dim=256, max_len=128),
    "small": BertConfig(vocab_size=4096, num_layers=4, d_model=256, num_heads=4, ff_dim=1024, max_len=256),
    "base": BertConfig(),  # BERT-base: 12 layers, width 768, 12 heads, FF 3072
}


def bert_config(name: str = "small", **overrides) -> BertConfig:
    """A named preset with overrides, e.g. bert_config("base", attention="softmax")."""
    return preset(BERT_PRESETS, name, **overrides)


class BertLayer(nnx.Module):
    """Post-LN encoder layer: (B, T, d) -> (B, T, d)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm: dict[str, Any] = dict(epsilon=cfg.layer_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.attn = make_attention(cfg.attention_config(), causal=False, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.ln_attn = nnx.LayerNorm(cfg.d_model, **norm)
        self.mlp = FeedForward(cfg.d_model, cfg.ff_dim, activation=cfg.activation, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.ln_mlp = nnx.LayerNorm(cfg.d_model, **norm)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, x, padding_mask):
        x = self.ln_attn(x + self.dropout(self.attn(x, padding_mask=padding_mask)))
        return self.ln_mlp(x + self.dropout(self.mlp(x)))


class Bert(nnx.Module):
    """BERT encoder with MLM and sequence-classification heads.

    __call__(input_ids (B, T), segment_ids (B, T) | None, padding_mask (B, T) bool | None)
      -> hidden (B, T, d); then `mlm_logits(hidden)` (B, T, V) or `classify(hidden, padding_mask)` (B, C).

    input_ids must lie in [0, vocab_size) and segment_ids in [0, type_vocab_size) at the real
    positions: an eager call raises a ValueError naming the first bad id; under jit, with
    `config.checkify_ids`, a checkify check does (run under `jax.experimental.checkify.checkify`),
    and otherwise an out-of-range id gives NaN outputs, never another id's embedding.
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt, pdt = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        d = config.d_model
        emb: dict[str, Any] = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        norm: dict[str, Any] = dict(epsilon=config.layer_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.token_embed = nnx.Embed(config.vocab_size, d, **emb)
        self.position_embed = nnx.Embed(config.max_len, d, **emb)
        self.segment_embed = nnx.Embed(config.type_vocab_size, d, **emb)
        self.ln_embed = nnx.LayerNorm(d, **norm)
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        # MLM head (decoder weights tied to token_embed)
        self.mlm_dense = nnx.Linear(d, d, **emb)
        self.mlm_ln = nnx.LayerNorm(d, **norm)
        self.mlm_bias = nnx.Param(jnp.zeros((config.vocab_size,), pdt))
        # classification head
        self.pooler = nnx.Linear(d, d, **emb)
        self.classifier = nnx.Linear(d, config.num_labels, **emb)

    def __call__(
        self, input_ids: jax.Array, *, segment_ids: jax.Array | None = None, padding_mask: jax.Array | None = None
    ) -> jax.Array:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, seq); got input_ids.shape={input_ids.shape}")
        b, t = input_ids.shape
        if t > self.config.max_len:
            raise ValueError(
                f"input_ids is longer than max_len={self.config.max_len}; got input_ids.shape={input_ids.shape}"
            )
        for name, arr in (("segment_ids", segment_ids), ("padding_mask", padding_mask)):
            if arr is not None and arr.shape != (b, t):
                raise ValueError(f"{name} must have the shape of input_ids {(b, t)}; got {name}.shape={arr.shape}")
        segment_ids = jnp.zeros_like(input_ids) if segment_ids is None else segment_ids
        # (B, T) position ids: counted over the real tokens, or 0..T-1 as transformers numbers them
        positions = positions_from_mask(padding_mask if self.config.positions == "from_mask" else None, (b, t))
        checked = self.config.checkify_ids
        x = (
            embed_ids(self.token_embed, input_ids, "input_ids", padding_mask, checkify_ids=checked)
            + self.position_embed(positions)
            + embed_ids(self.segment_embed, segment_ids, "segment_ids", padding_mask, checkify_ids=checked)
        )
        x = self.dropout(self.ln_embed(x))
        run = remat_layer(BertLayer.__call__, self.config.remat)  # run(layer, x, padding_mask)
        for layer in self.layers:
            x = run(layer, x, padding_mask)
        return x

    def mlm_logits(self, hidden: jax.Array) -> jax.Array:
        """(B, T, d) -> (B, T, V) float32 logits over the vocabulary."""
        h = self.mlm_ln(activation_fn(self.config.activation)(self.mlm_dense(hidden)))
        return (self.token_embed.attend(h) + self.mlm_bias[...]).astype(jnp.float32)

    def classify(self, hidden: jax.Array, padding_mask: jax.Array | None = None) -> jax.Array:
        """(B, T, d) -> (B, num_labels) float32, from the first real token ([CLS])."""
        first = jnp.zeros(hidden.shape[0], jnp.int32) if padding_mask is None else jnp.argmax(padding_mask, axis=1)
        cls = jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0]
        pooled = jnp.tanh(self.pooler(cls))
        return self.classifier(self.dropout(pooled)).astype(jnp.float32)
