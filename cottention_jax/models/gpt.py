"""A GPT-J-style decoder (rotary embeddings, parallel attention + MLP blocks) with switchable attention.

Block (GPT-J): h = LN(x);  x <- x + Attn(h) + MLP(h).  Attention projections have
no bias; the LM head is untied with a bias unless `tie_embeddings`.

Decoding is a mode of the same model: `init_cache(batch, max_length)` then calls
with `decode=True` continue from the cached per-layer state (see
`cottention_jax.decoding`).
"""

from __future__ import annotations

import dataclasses
from typing import cast

import jax
import jax.numpy as jnp
from flax import nnx

from cottention_jax.layers import (
    CosineAttention,
    RecurrentSoftmaxAttention,
    SoftmaxAttention,
    positions_from_mask,
)
from cottention_jax.models.common import (
    FeedForward,
    TransformerConfig,
    check_model_config,
    embed_ids,
    make_attention,
    preset,
    remat_layer,
)

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "gpt_config"]


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    """Hyper-parameters of `GPT`. Derive variants with `dataclasses.replace` (or `gpt_config`).

    The attention fields (attention, num_heads, num_kv_heads, stabilizer_init, stabilize,
    implementation, interpret, sequence_axis) are `AttentionConfig`'s, the other shared ones
    (sizes, dropout, norms, dtypes, remat, loss_chunk, checkify_ids) `TransformerConfig`'s,
    whose defaults are this model's (the paper's 300M decoder).
    """

    rotary_dim: int = 64  # rotary features per head (0: none)
    rope_base: float = 10000.0
    tie_embeddings: bool = False

    def __post_init__(self):
        check_model_config(self, causal=True)


GPT_PRESETS = {
    # a few seconds to build and run: tests
    "tiny": GPTConfig(vocab_size=256, num_layers=2, d_model=64, num_heads=4, ff_dim=256, rotary_dim=8, max_len=128),
    # CPU demos (make run): ~7M parameters with a 4k vocabulary
    "small": GPTConfig(
        vocab_size=4096, num_layers=4, d_model=256, num_heads=4, ff_dim=1024, rotary_dim=32, max_len=256
    ),
    # the paper's GPT-J-style 300M decoder: 20 layers, width 1024, 16 heads, FF 3072, rotary 64
    "gptj-300m": GPTConfig(),
}


def gpt_config(name: str = "small", **overrides) -> GPTConfig:
    """A named preset with overrides, e.g. gpt_config("small", attention="softmax")."""
    return preset(GPT_PRESETS, name, **overrides)


class GPTBlock(nnx.Module):
    """One GPT-J block: x + Attn(LN(x)) + MLP(LN(x)); (B, T, d) -> (B, T, d)."""

    def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.ln = nnx.LayerNorm(cfg.d_model, epsilon=cfg.layer_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
        # make_attention builds one of the three layer types; it is typed as a plain nnx.Module
        self.attn = cast(
            CosineAttention | SoftmaxAttention | RecurrentSoftmaxAttention,
            make_attention(
                cfg.attention_config(),
                causal=True,
                rotary_dim=cfg.rotary_dim,
                rope_base=cfg.rope_base,
                use_bias=False,
                dtype=dt,
                param_dtype=pdt,
                rngs=rngs,
            ),
        )
        self.mlp = FeedForward(cfg.d_model, cfg.ff_dim, activation=cfg.activation, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, x, padding_mask, positions, decode, prefill=False):
        h = self.ln(x)
        attn = self.attn(h, padding_mask=padding_mask, positions=positions, decode=decode, prefill=prefill)
        return x + self.dropout(attn) + self.dropout(self.mlp(h))


def _run_block(block: GPTBlock, x, padding_mask, positions):
    return block(x, padding_mask, positions, False)


class GPT(nnx.Module):
    """GPT-J-style causal language model.

    __call__(tokens (B, T) int, padding_mask (B, T) bool | None, decode, prefill) -> logits (B, T, V)
    float32, which is logits(hidden(tokens, ...)): `hidden` -> (B, T, d) after the final LayerNorm,
    `logits` the LM head alone (the chunked loss calls them apart). decode=True continues from the
    cache; with prefill=True too, the cache restarts from these tokens (a prompt, in the parallel form).
    """

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt, pdt = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.blocks = nnx.List([GPTBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.ln_f = nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nnx.Linear(config.d_model, config.vocab_size, dtype=dt, param_dtype=pdt, rngs=rngs)
        )
        # decode mode: real tokens per row so far (B,); None until init_cache
        self.tokens_seen: nnx.Cache[jax.Array] | None = nnx.data(None)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> None:
        """Start decoding a batch: empty per-layer states (cosine: d x d per head, whatever
        max_length; softmax: a KV cache of max_length, default config.max_len)."""
        max_length = max_length or self.config.max_len
        for block in self.blocks:
            block.attn.init_cache((batch_size, max_length, self.config.d_model), jnp.dtype(self.config.dtype))
        self.tokens_seen = nnx.Cache(jnp.zeros((batch_size,), jnp.int32))

    def __call__(
        self, tokens: jax.Array, *, padding_mask: jax.Array | None = None, decode: bool = False, prefill: bool = False
    ) -> jax.Array:
        return self.logits(self.hidden(tokens, padding_mask=padding_mask, decode=decode, prefill=prefill))

    def hidden(
        self, tokens: jax.Array, *, padding_mask: jax.Array | None = None, decode: bool = False, prefill: bool = False
    ) -> jax.Array:
        """tokens (B, T) -> final hidden states (B, T, d) in the compute dtype, after ln_f.

        Outside decode mode each block runs under `config.remat`, and T must be at most
        `config.max_len` (decoding continues past it: the cosine state has no length, and a
        softmax KV cache has the length `init_cache` gave it).

        Token ids must lie in [0, vocab_size) at the real positions (`models.common.check_ids`):
        an eager call raises a ValueError naming the first bad one. Under jit the ids are not
        known while tracing: with `config.checkify_ids` the check is a checkify check (run under
        `jax.experimental.checkify.checkify`); otherwise an out-of-range id gives NaN logits from
        its position on, never another token's.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq); got tokens.shape={tokens.shape}")
        if not decode and tokens.shape[1] > self.config.max_len:
            raise ValueError(
                f"tokens is longer than max_len={self.config.max_len}; got tokens.shape="
                f"{tokens.shape} (decode mode has no such bound)"
            )
        if padding_mask is not None and padding_mask.shape != tokens.shape:
            raise ValueError(
                f"padding_mask must have the shape of tokens {tokens.shape}; "
                f"got padding_mask.shape={padding_mask.shape}"
            )
        if prefill and not decode:
            raise ValueError("prefill=True restarts the decode cache; it needs decode=True")
        offset = None
        if decode:
            if self.tokens_seen is None:
                raise ValueError("call init_cache(batch_size, max_length) before decode=True")
            offset = jnp.zeros_like(self.tokens_seen[...]) if prefill else self.tokens_seen[...]
            real = jnp.ones(tokens.shape, bool) if padding_mask is None else padding_mask
            self.tokens_seen[...] = offset + real.sum(axis=1, dtype=jnp.int32)
        positions = positions_from_mask(padding_mask, tokens.shape, offset)
        x = embed_ids(self.embed, tokens, "tokens", padding_mask, checkify_ids=self.config.checkify_ids)
        if decode:
            for block in self.blocks:
                x = block(x, padding_mask, positions, True, prefill)
        else:
            run = remat_layer(_run_block, self.config.remat)
            for block in self.blocks:
                x = run(block, x, padding_mask, positions)
        return self.ln_f(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head: hidden (..., d) -> logits (..., V) float32."""
        logits = self.embed.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return logits.astype(jnp.float32)
