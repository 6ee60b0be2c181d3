"""The layers as drop-ins for `nnx.MultiHeadAttention` (its constructor and call arguments, Flax masks,
cross-attention, dropout), and `cosine_attention_fn` where Flax takes an attention function; checked
against `nnx.MultiHeadAttention` itself (softmax) and the float64 NumPy specification (cosine)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from cottention_jax import CosineAttention, SoftmaxAttention, cosine_attention, cosine_attention_fn
from cottention_jax.attention_fn import cosine_cross_attention, padding_from_mask
from tests._numpy_cosine import cosine_attention_np
from tests._util import fresh_key, rel_error


def _lengths_mask(key, b, t):
    """(B, T) bool right padding, at least one real token per row, the first row unpadded."""
    lengths = jax.random.randint(key, (b,), 1, t + 1).at[0].set(t)
    return jnp.arange(t)[None] < lengths[:, None]


class _Block(nnx.Module):
    """A block written for nnx.MultiHeadAttention: self-attention then cross-attention over a memory,
    both with Flax masks and the dropout arguments. Only `attention` changes between the runs."""

    def __init__(self, attention, *, rngs):
        self.embed = nnx.Linear(6, 16, rngs=rngs)
        self.attn = attention(
            num_heads=4,
            in_features=16,
            qkv_features=32,
            out_features=16,
            dropout_rate=0.1,
            broadcast_dropout=False,
            decode=False,
            rngs=rngs,
        )
        self.cross = attention(
            num_heads=2, in_features=16, in_kv_features=12, dropout_rate=0.0, decode=False, rngs=rngs
        )

    def __call__(self, x, memory, x_real, memory_real, *, deterministic):
        h = self.embed(x)
        h = h + self.attn(h, mask=nnx.make_attention_mask(x_real, x_real), deterministic=deterministic)
        return h + self.cross(h, memory, mask=nnx.make_attention_mask(x_real, memory_real), deterministic=deterministic)


def _block_inputs():
    kx, km, kr, kmr = jax.random.split(fresh_key(), 4)
    x, memory = jax.random.normal(kx, (3, 9, 6)), jax.random.normal(km, (3, 5, 12))
    return x, memory, _lengths_mask(kr, 3, 9), _lengths_mask(kmr, 3, 5)


def _project(x, layer):
    """LinearGeneral in NumPy: x (B, T, in) with kernel (in, H, D) + bias (H, D)."""
    return np.einsum("bti,ihd->bthd", x, np.asarray(layer.kernel[...], np.float64)) + np.asarray(
        layer.bias[...], np.float64
    )


def _cosine_layer_np(layer, xq, xkv, q_real, k_real):
    q, k, v = _project(xq, layer.query), _project(xkv, layer.key), _project(xkv, layer.value)
    o = cosine_attention_np(q, k, v, layer.stabilizer[...], causal=False, query_real=q_real, key_real=k_real)
    return np.einsum("bthd,hdo->bto", o, np.asarray(layer.out.kernel[...], np.float64)) + np.asarray(
        layer.out.bias[...], np.float64
    )


def test_softmax_attention_swaps_into_a_multiheadattention_model_with_the_same_outputs():
    x, memory, x_real, memory_real = _block_inputs()
    reference = _Block(nnx.MultiHeadAttention, rngs=nnx.Rngs(0))
    ours = _Block(SoftmaxAttention, rngs=nnx.Rngs(1))
    nnx.update(ours, nnx.state(reference, nnx.Param))  # same parameter names and shapes
    want = reference(x, memory, x_real, memory_real, deterministic=True)
    got = ours(x, memory, x_real, memory_real, deterministic=True)
    real = np.asarray(x_real)  # wholly masked rows: MHA averages, ours is zero
    assert rel_error(np.asarray(got)[real], np.asarray(want)[real]) < 1e-5


def test_cosine_attention_swaps_into_the_same_model_and_trains():
    x, memory, x_real, memory_real = _block_inputs()
    model = _Block(CosineAttention, rngs=nnx.Rngs(0))
    for layer in (model.attn, model.cross):  # stabilizers away from their init
        layer.stabilizer[...] = jax.random.normal(fresh_key(), layer.stabilizer[...].shape)
    got = np.asarray(model(x, memory, x_real, memory_real, deterministic=True), np.float64)
    xn, mn, xr, mr = (np.asarray(a) for a in (x, memory, x_real, memory_real))
    h = xn @ np.asarray(model.embed.kernel[...], np.float64) + np.asarray(model.embed.bias[...], np.float64)
    h = h + _cosine_layer_np(model.attn, h, h, xr, xr)
    want = h + _cosine_layer_np(model.cross, h, mn, xr, mr)
    assert rel_error(got[xr], want[xr]) < 1e-5

    def loss(model):
        return jnp.mean(model(x, memory, x_real, memory_real, deterministic=False) ** 2)

    grads = nnx.grad(loss)(model)
    for layer in ("attn", "cross"):
        g = np.asarray(grads[layer]["stabilizer"][...])
        assert np.all(np.isfinite(g)) and np.any(g != 0)
    model.eval()  # nnx's switch turns the dropout off
    np.testing.assert_array_equal(
        model(x, memory, x_real, memory_real, deterministic=None),
        model(x, memory, x_real, memory_real, deterministic=True),
    )


def test_cross_attention_with_other_lengths_matches_the_specification_and_its_gradients():
    kq, kk, kv, km, kr1, kr2 = jax.random.split(fresh_key(), 6)
    q, k, v = (
        jax.random.normal(kq, (2, 5, 4, 8)),
        jax.random.normal(kk, (2, 11, 2, 8)),
        jax.random.normal(kv, (2, 11, 2, 6)),
    )
    m = jax.random.normal(km, (4,))
    q_real, k_real = _lengths_mask(kr1, 2, 5), _lengths_mask(kr2, 2, 11)
    out = cosine_cross_attention(q, k, v, m, query_mask=q_real, key_mask=k_real)
    want = cosine_attention_np(q, k, v, m, causal=False, query_real=q_real, key_real=k_real)
    assert rel_error(out, want) < 1e-5
    assert np.all(np.asarray(out)[~np.asarray(q_real)] == 0)

    def f(q, k, v, m):
        return jnp.sum(jnp.sin(cosine_cross_attention(q, k, v, m, query_mask=q_real, key_mask=k_real)))

    check_grads(f, (q, k, v, m), order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-3)


@pytest.mark.parametrize("broadcast", [False, True])
def test_value_dropout_is_unbiased_and_broadcasts_as_flax_does(broadcast):
    layer = CosineAttention(num_heads=2, in_features=8, dropout_rate=0.5, broadcast_dropout=broadcast, rngs=nnx.Rngs(0))
    x = jnp.tile(jax.random.normal(fresh_key(), (1, 6, 8)), (2, 1, 1))  # two identical rows
    clean = layer(x, deterministic=True)
    dropped = layer(x, deterministic=False)
    assert rel_error(dropped, clean) > 0.05
    assert np.array_equal(dropped[0], dropped[1]) == broadcast  # one draw for all rows, or per row

    @nnx.vmap(in_axes=(None, 0))
    def draw(layer, key):
        return layer(x, deterministic=False, rngs=nnx.Rngs(dropout=key))

    mean = jnp.mean(draw(layer, jax.random.split(fresh_key(), 4000)), axis=0)
    assert rel_error(mean, clean) < 0.05  # E[dropout] = no dropout


def test_causal_layer_takes_a_combined_causal_and_padding_mask_under_jit():
    layer = CosineAttention(num_heads=2, in_features=8, causal=True, rotary_dim=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(fresh_key(), (2, 7, 8))
    real = jnp.arange(7)[None] >= jnp.array([[0], [3]])  # row 1 left-padded
    mask = nnx.combine_masks(nnx.make_attention_mask(real, real), nnx.make_causal_mask(real))
    want = layer(x, padding_mask=real)
    assert rel_error(layer(x, mask=mask), want) < 1e-6
    assert rel_error(nnx.jit(lambda layer, x, mask: layer(x, mask=mask))(layer, x, mask), want) < 1e-6


def test_bad_masks_and_call_arguments_are_clear_errors():
    bidirectional = CosineAttention(num_heads=2, in_features=8, rngs=nnx.Rngs(0))
    causal = CosineAttention(num_heads=2, in_features=8, causal=True, rngs=nnx.Rngs(0))
    x, real = jnp.ones((2, 6, 8)), jnp.ones((2, 6), bool)
    window = jnp.abs(jnp.arange(6)[:, None] - jnp.arange(6)[None]) <= 1
    with pytest.raises(ValueError, match=r"must be key/query padding.*differs from that at \(b, h, t, s\)"):
        bidirectional(x, mask=jnp.broadcast_to(window, (2, 1, 6, 6)))
    with pytest.raises(ValueError, match="mask is causal.*causal=True"):
        bidirectional(x, mask=nnx.make_causal_mask(real))
    with pytest.raises(
        ValueError, match=r"mask must broadcast to \(batch, heads, q_len, kv_len\).*mask.shape=\(2, 6\)"
    ):
        bidirectional(x, mask=real)
    with pytest.raises(ValueError, match="either padding_mask .* or mask"):
        bidirectional(x, mask=nnx.make_attention_mask(real, real), padding_mask=real)
    with pytest.raises(ValueError, match="sow_weights"):
        bidirectional(x, sow_weights=True)
    with pytest.raises(ValueError, match=r"is_causal=True on a bidirectional layer"):
        bidirectional(x, is_causal=True)
    with pytest.raises(ValueError, match="keys of length 4 for 6 queries"):
        causal(x, jnp.ones((2, 4, 8)))
    with pytest.raises(ValueError, match="query padding .* and key padding .* differ"):
        causal(x, mask=nnx.make_attention_mask(real, real.at[1, 5].set(False)))
    with pytest.raises(ValueError, match="padding_mask is for self-attention"):
        bidirectional(x, jnp.ones((2, 4, 8)), padding_mask=real)
    with pytest.raises(ValueError, match="rotary embeddings .* need self-attention"):
        CosineAttention(num_heads=2, in_features=8, rotary_dim=2, rngs=nnx.Rngs(0))(x, jnp.ones((2, 4, 8)))
    with pytest.raises(ValueError, match=r"inputs_k and inputs_v must have shape \(batch=2, kv_seq, 8\)"):
        bidirectional(x, jnp.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\); got 1.5"):
        CosineAttention(num_heads=2, in_features=8, dropout_rate=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout_rng is required"):
        cosine_attention_fn(
            jnp.ones((1, 3, 2, 4)),
            jnp.ones((1, 3, 2, 4)),
            jnp.ones((1, 3, 2, 4)),
            dropout_rate=0.1,
            deterministic=False,
        )
    with pytest.raises(ValueError, match="bias: cosine attention forms no attention logits"):
        cosine_attention_fn(
            jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 2, 4)), bias=jnp.zeros((1, 2, 3, 3))
        )
    for length in (1, 3):  # one query over a KV cache takes its own path, past the op's checks
        with pytest.raises(ValueError, match=r"stabilize must be one of \('value', 'query'\); got 'bogus'"):
            cosine_attention_fn(
                jnp.ones((1, length, 2, 4)),
                jnp.ones((1, 3, 2, 4)),
                jnp.ones((1, 3, 2, 4)),
                causal=True,
                stabilize="bogus",
            )
    query_real, key_real = padding_from_mask(
        nnx.make_attention_mask(real, real.at[0, 4:].set(False)), 2, 6, 6, causal=False
    )
    assert query_real.shape == (2, 6) and int(key_real[0].sum()) == 4


@pytest.mark.parametrize("causal", [False, True])
def test_attention_fn_in_multiheadattention_matches_the_specification(causal):
    fn = functools.partial(cosine_attention_fn, causal=causal, stabilizer=0.3)
    mha = nnx.MultiHeadAttention(
        num_heads=4, in_features=16, qkv_features=32, attention_fn=fn, decode=False, rngs=nnx.Rngs(0)
    )
    x = jax.random.normal(fresh_key(), (2, 3, 10, 16))  # two batch dims
    real = _lengths_mask(fresh_key(), 6, 10).reshape(2, 3, 10)
    mask = nnx.make_attention_mask(real, real)
    if causal:
        mask = nnx.combine_masks(mask, nnx.make_causal_mask(real))
    got = np.asarray(mha(x, mask=mask), np.float64).reshape(6, 10, 16)
    xn, r = np.asarray(x, np.float64).reshape(6, 10, 16), np.asarray(real).reshape(6, 10)
    q, k, v = (_project(xn, layer) for layer in (mha.query, mha.key, mha.value))
    o = cosine_attention_np(q, k, v, np.full(4, 0.3), causal=causal, query_real=r, key_real=r)
    want = np.einsum("bthd,hdo->bto", o, np.asarray(mha.out.kernel[...], np.float64)) + np.asarray(
        mha.out.bias[...], np.float64
    )
    assert rel_error(got[r], want[r]) < 1e-5


def test_attention_fn_decodes_through_the_multiheadattention_kv_cache():
    fn = functools.partial(cosine_attention_fn, causal=True, stabilizer=jnp.array([0.2, -1.0]))
    for stabilize in ("value", "query"):
        kwargs = dict(num_heads=2, in_features=8, attention_fn=functools.partial(fn, stabilize=stabilize))
        parallel = nnx.MultiHeadAttention(decode=False, rngs=nnx.Rngs(0), **kwargs)
        stepwise = nnx.MultiHeadAttention(decode=True, rngs=nnx.Rngs(0), **kwargs)  # the same parameters
        x = jax.random.normal(fresh_key(), (2, 7, 8))
        want = parallel(x)
        stepwise.init_cache((2, 12, 8))  # 12 slots, 7 written
        got = jnp.concatenate([stepwise(x[:, i : i + 1]) for i in range(7)], axis=1)
        assert rel_error(got, want) < 1e-5, stabilize


def test_attention_fn_without_a_mask_is_the_op():
    q, k, v = (jax.random.normal(key, (2, 9, 2, 4)) for key in jax.random.split(fresh_key(), 3))
    m = jnp.array([0.5, -0.5])
    for causal in (False, True):
        np.testing.assert_allclose(
            cosine_attention_fn(q, k, v, causal=causal, stabilizer=m),
            cosine_attention(q, k, v, m, causal=causal),
            rtol=1e-6,
            atol=1e-6,
        )
