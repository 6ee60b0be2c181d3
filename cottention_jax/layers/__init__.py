"""Flax NNX attention layers: `CosineAttention`, its baseline `SoftmaxAttention`, and
`RecurrentSoftmaxAttention` (the softmax-as-an-RNN variants of the second paper).

One module per layer type, over one shared base:
  projected.py          ProjectedAttention: projections, rotary, value dropout, the call's checks
  cosine.py             CosineAttention
  softmax.py            SoftmaxAttention
  recurrent_softmax.py  RecurrentSoftmaxAttention
  rope.py               apply_rope, positions_from_mask

All take the constructor arguments and call convention of
`flax.nnx.MultiHeadAttention` that apply to them (num_heads, in_features,
qkv_features, out_features, num_kv_heads, in_kv_features, dtype, param_dtype,
use_bias, kernel_init, bias_init, out_kernel_init, out_bias_init, precision,
dropout_rate, broadcast_dropout, deterministic, keep_rngs, decode, rngs; called as
`attn(x)`, `attn(x, memory, mask=..., deterministic=..., rngs=...)`), so swapping one
into a model is a one-line change. Projection parameters have the same names and
shapes as nnx.MultiHeadAttention's (query/key/value kernels (in, heads, head_dim), out
kernel (heads, head_dim, out)); CosineAttention adds one `stabilizer` (heads,). Each layer
takes only its own options (`cottention_jax.models.make_attention` passes each layer the
ones it takes, so a config can switch the attention type freely).

Inputs are (B, T, features); padding_mask (B, T) bool, True = real token, or a Flax
`mask` (B, heads, T, S) of the padding form (`attention_fn.padding_from_mask`;
SoftmaxAttention takes any mask); keys of another length S: cross-attention
(bidirectional layers); positions (B, T) int for rotary embeddings (default: index
among real tokens, continued in decode mode from the real tokens in the layer's cache, so
decoding equals the parallel pass). dropout_rate drops whole value vectors (`attention_fn`
docstring).

Decode mode (causal only): `init_cache((batch, max_length, features))` once,
then each call continues from the cache. CosineAttention carries a
`CosineAttentionState` (d x d per head: memory constant in the number of
tokens); SoftmaxAttention a key/value cache of max_length positions. A call
with `decode=True, prefill=True` restarts the cache from its tokens (a prompt):
both layers then use their parallel form (SoftmaxAttention its flash path over
the prompt alone, never scores against the empty cache slots). Each layer counts
the real tokens in its cache per batch row (padding does not advance it): the
rotary position of the next token. SoftmaxAttention refuses (ValueError) tokens
that do not fit in its max_length slots.
"""

from cottention_jax.layers.cosine import CosineAttention
from cottention_jax.layers.projected import ProjectedAttention
from cottention_jax.layers.recurrent_softmax import RecurrentSoftmaxAttention
from cottention_jax.layers.rope import apply_rope, positions_from_mask
from cottention_jax.layers.softmax import SoftmaxAttention

__all__ = [
    "CosineAttention",
    "SoftmaxAttention",
    "RecurrentSoftmaxAttention",
    "ProjectedAttention",
    "apply_rope",
    "positions_from_mask",
]
