"""A GPT-J-style decoder (rotary embeddings, parallel attention + MLP blocks) with switchable attention.

Block (GPT-J): h = LN(x);  x <- x + Attn(h) + MLP(h).  Attention projections have
no bias; the LM head is untied with a bias unless `tie_embeddings`.

Decoding is a mode of the same model: `init_cache(batch, max_length)` then calls
with `decode=True` continue from the cached per-layer state (see
`cottention_jax.decoding`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cottention_jax.layers import positions_from_mask
from cottention_jax.losses import weighted_cross_entropy
from cottention_jax.models.common import (FeedForward, check_model_config, embed_ids, make_attention, preset,
                                          remat_layer)

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "gpt_config", "lm_loss", "perplexity"]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of `GPT`. Derive variants with `dataclasses.replace` (or `gpt_config`)."""

    vocab_size: int = 50257
    num_layers: int = 20
    d_model: int = 1024
    num_heads: int = 16
    num_kv_heads: int | None = None       # None: as num_heads; fewer: grouped-query attention
    ff_dim: int = 3072
    activation: str = "gelu_tanh"         # of the MLP: models.common.ACTIVATIONS ("gelu": exact)
    rotary_dim: int = 64                  # rotary features per head (0: none)
    rope_base: float = 10000.0
    max_len: int = 2048                   # training context; default size of softmax KV caches
    attention: str = "cosine"             # see cottention_jax.models.attention_names()
    stabilizer_init: float = 0.5
    stabilize: str = "value"
    implementation: str | None = None     # attention implementation, per attention (None: per backend)
    interpret: bool = False               # Pallas kernels in interpret mode (CPU tests)
    sequence_axis: str | None = None      # mesh axis the sequence is split over (cosine; see parallel.py)
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dtype: str = "float32"                # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"                   # per block: "none", "block" or "dots" (models.common.REMAT_MODES)
    loss_chunk: int = 0                   # positions per chunk of the training cross-entropy (0: all at once)
    checkify_ids: bool = False            # under jit, token ids get a checkify check (see GPT.hidden)

    def __post_init__(self):
        check_model_config(self, causal=True)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


GPT_PRESETS = {
    # a few seconds to build and run: tests
    "tiny": GPTConfig(vocab_size=256, num_layers=2, d_model=64, num_heads=4, ff_dim=256,
                      rotary_dim=8, max_len=128),
    # CPU demos (make run): ~7M parameters with a 4k vocabulary
    "small": GPTConfig(vocab_size=4096, num_layers=4, d_model=256, num_heads=4, ff_dim=1024,
                       rotary_dim=32, max_len=256),
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
        self.attn = make_attention(
            cfg.attention, num_heads=cfg.num_heads, in_features=cfg.d_model,
            num_kv_heads=cfg.num_kv_heads, causal=True, rotary_dim=cfg.rotary_dim, rope_base=cfg.rope_base,
            use_bias=False, stabilizer_init=cfg.stabilizer_init, stabilize=cfg.stabilize,
            implementation=cfg.implementation, interpret=cfg.interpret,
            sequence_axis=cfg.sequence_axis, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.mlp = FeedForward(cfg.d_model, cfg.ff_dim, activation=cfg.activation, dtype=dt, param_dtype=pdt,
                               rngs=rngs)
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
        self.ln_f = nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps, dtype=dt,
                                  param_dtype=pdt, rngs=rngs)
        self.lm_head = None if config.tie_embeddings else nnx.Linear(
            config.d_model, config.vocab_size, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.tokens_seen = nnx.data(None)   # decode mode: real tokens per row so far (B,)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> None:
        """Start decoding a batch: empty per-layer states (cosine: d x d per head, whatever
        max_length; softmax: a KV cache of max_length, default config.max_len)."""
        max_length = max_length or self.config.max_len
        for block in self.blocks:
            block.attn.init_cache((batch_size, max_length, self.config.d_model), jnp.dtype(self.config.dtype))
        self.tokens_seen = nnx.Cache(jnp.zeros((batch_size,), jnp.int32))

    def __call__(self, tokens: jax.Array, *, padding_mask: jax.Array | None = None,
                 decode: bool = False, prefill: bool = False) -> jax.Array:
        return self.logits(self.hidden(tokens, padding_mask=padding_mask, decode=decode, prefill=prefill))

    def hidden(self, tokens: jax.Array, *, padding_mask: jax.Array | None = None,
               decode: bool = False, prefill: bool = False) -> jax.Array:
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
            raise ValueError(f"tokens is longer than max_len={self.config.max_len}; got tokens.shape="
                             f"{tokens.shape} (decode mode has no such bound)")
        if padding_mask is not None and padding_mask.shape != tokens.shape:
            raise ValueError(f"padding_mask must have the shape of tokens {tokens.shape}; "
                             f"got padding_mask.shape={padding_mask.shape}")
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


def lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean next-token cross-entropy (nats): logits (B, T, V), targets (B, T) int, weights (B, T)."""
    return weighted_cross_entropy(logits, targets, weights)[0]


def perplexity(mean_loss) -> jax.Array:
    """exp(mean cross-entropy in nats)."""
    return jnp.exp(mean_loss)
