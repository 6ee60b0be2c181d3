"""CosineAttention's stabilizer variants ("learned", "none": p = 0, "length": p = 1) against a numpy formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax.layers import CosineAttention
from cottention_jax.models.common import AttentionConfig, check_model_config, make_attention
from cottention_jax.train_hooks import stabilizer_values
from tests._util import fresh_key, padding_mask, rel_error


def _seed() -> int:
    return int(jax.random.randint(fresh_key(), (), 0, 1_000_000))


def _numpy_cosine(x, layer, p, mask, causal, stabilize):
    """The layer written out in float64 numpy: projections, unit q and k, sum over real i (<= t when causal)
    of (q^_t . k^_i) v_i times n_i^-p ("value") or n_t^-p ("query"), n the real tokens so far; output projection."""
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    proj = lambda lin: np.einsum("btf,fhd->bthd", x, np.asarray(lin.kernel[...], np.float64))  # noqa: E731
    q, k, v = proj(layer.query), proj(layer.key), proj(layer.value)
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    real = np.ones((b, t), bool) if mask is None else np.asarray(mask)
    counts = np.maximum(np.cumsum(real, axis=1), 1).astype(np.float64)  # n_i: (B, T)
    total = np.maximum(real.sum(axis=1), 1).astype(np.float64)  # (B,)
    p = np.broadcast_to(np.asarray(p, np.float64), (q.shape[2],))  # (H,)
    out = np.zeros(q.shape[:3] + (v.shape[-1],))
    for bi in range(b):
        for ti in range(t):
            if not real[bi, ti]:
                continue
            for h in range(q.shape[2]):
                acc = np.zeros(v.shape[-1])
                for i in range(t):
                    if not real[bi, i] or (causal and i > ti):
                        continue
                    w = q[bi, ti, h] @ k[bi, i, h]
                    if causal and stabilize == "value":
                        w = w * counts[bi, i] ** -p[h]
                    acc += w * v[bi, i, h]
                n_t = counts[bi, ti] if causal else total[bi]
                if not (causal and stabilize == "value"):
                    acc = acc * n_t ** -p[h]
                out[bi, ti, h] = acc
    return np.einsum("bthd,hdf->btf", out, np.asarray(layer.out.kernel[...], np.float64))


def _exponent(layer, stabilizer):
    if stabilizer == "none":
        return 0.0
    if stabilizer == "length":
        return 1.0
    return 1.0 / (1.0 + np.exp(-np.asarray(layer.stabilizer[...], np.float64)))


@pytest.mark.parametrize("stabilizer", ["learned", "none", "length"])
@pytest.mark.parametrize(
    "causal,stabilize,pad", [(True, "value", "left"), (True, "query", "right"), (False, "value", "right")]
)
def test_each_stabilizer_matches_the_numpy_formula(stabilizer, causal, stabilize, pad):
    b, t, f = 2, 9, 16
    layer = CosineAttention(
        num_heads=4,
        in_features=f,
        num_kv_heads=2,
        causal=causal,
        use_bias=False,
        stabilizer=stabilizer,
        stabilize=stabilize,
        stabilizer_init=-0.7,
        rngs=nnx.Rngs(_seed()),
    )
    if stabilizer == "learned":  # distinct exponents per head
        layer.stabilizer[...] = jax.random.normal(fresh_key(), (4,))
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask(pad, b, t)
    expected = _numpy_cosine(x, layer, _exponent(layer, stabilizer), mask, causal, stabilize)
    assert rel_error(layer(x, padding_mask=mask), expected) <= 1e-5


@pytest.mark.parametrize(
    "stabilizer,stabilize", [("none", "value"), ("length", "value"), ("length", "query"), ("learned", "query")]
)
def test_decode_equals_the_parallel_form(stabilizer, stabilize):
    """Prefill a prompt, then one RNN step per token: the same outputs as one parallel pass over all tokens."""
    b, t, f, prompt = 2, 11, 16, 6
    layer = CosineAttention(
        num_heads=2,
        in_features=f,
        causal=True,
        use_bias=False,
        stabilizer=stabilizer,
        stabilize=stabilize,
        rngs=nnx.Rngs(_seed()),
    )
    x = jax.random.normal(fresh_key(), (b, t, f))
    full = layer(x)
    layer.init_cache((b, t, f))
    outs = [layer(x[:, :prompt], decode=True, prefill=True)]
    outs += [layer(x[:, i : i + 1], decode=True) for i in range(prompt, t)]
    assert rel_error(jnp.concatenate(outs, axis=1), full) <= 1e-5


@pytest.mark.parametrize("stabilizer,p", [("none", 0.0), ("length", 1.0)])
def test_fixed_stabilizers_have_no_parameter_and_finite_gradients(stabilizer, p):
    layer = CosineAttention(num_heads=3, in_features=12, causal=True, stabilizer=stabilizer, rngs=nnx.Rngs(_seed()))
    params = nnx.state(layer, nnx.Param)
    assert "stabilizer" not in params  # nothing for the optimizer (wrt=nnx.Param) to train
    assert "stabilizer" in nnx.state(layer)  # but kept (and checkpointed) as a constant
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(nnx.state(layer)))  # checkpoints refuse inf
    np.testing.assert_array_equal(stabilizer_values(layer)[0], np.full(3, p))  # the logging hook's values
    x = jax.random.normal(fresh_key(), (2, 7, 12))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_make_attention_passes_the_stabilizer_and_configs_check_it():
    layer = make_attention(AttentionConfig(d_model=16, num_heads=2, stabilizer="length"), causal=True, rngs=nnx.Rngs(0))
    assert layer.stabilizer_kind == "length" and not isinstance(layer.stabilizer, nnx.Param)
    make_attention(
        AttentionConfig(d_model=16, num_heads=2, attention="softmax", stabilizer="none"), causal=True, rngs=nnx.Rngs(0)
    )  # other layer types ignore it
    from cottention_jax.models.gpt import GPTConfig  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"GPTConfig.stabilizer must be one of .*'learned'.*got 'fixed'"):
        check_model_config(GPTConfig(d_model=16, num_heads=2, rotary_dim=8, stabilizer="fixed"), causal=True)
    with pytest.raises(ValueError, match=r"stabilizer must be one of .*got 'p0'"):
        CosineAttention(num_heads=2, in_features=8, stabilizer="p0", rngs=nnx.Rngs(0))
