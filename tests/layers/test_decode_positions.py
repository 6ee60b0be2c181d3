"""Decode mode of every attention layer with rotary embeddings and no `positions=`: the layer counts
the real tokens in its cache, so prefill + steps (+ chunks) equal the parallel forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax.layers import CosineAttention, RecurrentSoftmaxAttention, SoftmaxAttention
from tests._util import fresh_key, rel_error

F, HEADS, ROTARY = 32, 4, 8  # head_dim 8: rotary over all of it

LAYERS = {
    "cosine": lambda rngs: CosineAttention(HEADS, F, num_kv_heads=2, causal=True, rotary_dim=ROTARY, rngs=rngs),
    "softmax": lambda rngs: SoftmaxAttention(HEADS, F, num_kv_heads=2, causal=True, rotary_dim=ROTARY, rngs=rngs),
    "taylor2": lambda rngs: RecurrentSoftmaxAttention(
        HEADS, F, num_kv_heads=2, variant="taylor2", rotary_dim=ROTARY, rngs=rngs
    ),
    "taylor2-gate": lambda rngs: RecurrentSoftmaxAttention(
        HEADS, F, variant="taylor2-gate", rotary_dim=ROTARY, rngs=rngs
    ),
}


def _inputs(lengths, total):
    """x (B, total, F) and a left-padding mask (B, total) with `lengths` real tokens per row."""
    x = jax.random.normal(fresh_key(), (len(lengths), total, F))
    mask = jnp.arange(total)[None, :] >= (total - jnp.array(lengths))[:, None]
    return x, mask


def _decoded(layer, x, mask, prompt_len, chunks):
    """Prefill x[:, :prompt_len], then the rest in pieces of the sizes `chunks` (1: one RNN step)."""
    layer.init_cache((x.shape[0], x.shape[1], F))
    outs = [layer(x[:, :prompt_len], padding_mask=mask[:, :prompt_len], decode=True, prefill=True)]
    start = prompt_len
    for size in chunks:
        outs.append(layer(x[:, start : start + size], padding_mask=mask[:, start : start + size], decode=True))
        start += size
    assert start == x.shape[1]
    return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_decode_without_positions_equals_the_parallel_pass(kind):
    """Row 1's left padding runs past the prompt, so some decode steps are padding: only real tokens
    advance the position. The steps of one token and a chunk of three both continue the count."""
    layer = LAYERS[kind](nnx.Rngs(int(jax.random.randint(fresh_key(), (), 0, 1e6))))
    x, mask = _inputs([14, 7], 14)  # row 1: 7 padding positions, then 7 real tokens
    parallel = layer(x, padding_mask=mask)
    decoded = _decoded(layer, x, mask, 5, [1, 1, 1, 1, 3, 1, 1])
    real = mask[:, :, None]
    assert rel_error(jnp.where(real, decoded, 0), jnp.where(real, parallel, 0)) <= 1e-5


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_decode_positions_restart_with_prefill(kind):
    """A second prefill starts counting from 0 again: its steps equal a fresh parallel pass."""
    layer = LAYERS[kind](nnx.Rngs(1))
    first, first_mask = _inputs([6, 4], 6)
    _decoded(layer, first, first_mask, 3, [1, 1, 1])
    x, mask = _inputs([9, 5], 9)
    parallel = layer(x, padding_mask=mask)
    decoded = _decoded(layer, x, mask, 4, [1] * 5)
    real = mask[:, :, None]
    assert rel_error(jnp.where(real, decoded, 0), jnp.where(real, parallel, 0)) <= 1e-5


def test_explicit_positions_are_used_as_given_in_decode_mode():
    """positions= from the caller (as GPT passes them) override the layer's count: the count's own
    position (5 after a 5-token prompt) gives the same step, another position another one."""
    layer = LAYERS["cosine"](nnx.Rngs(2))
    x, _ = _inputs([6, 6], 6)
    layer.init_cache((2, 6, F))
    outs = {}
    for pos in (None, 5, 0):
        layer(x[:, :5], decode=True, prefill=True)
        outs[pos] = np.asarray(layer(x[:, 5:], decode=True, positions=None if pos is None else jnp.full((2, 1), pos)))
    np.testing.assert_array_equal(outs[None], outs[5])
    assert not np.allclose(outs[None], outs[0], atol=1e-4)
