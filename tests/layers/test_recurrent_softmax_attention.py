"""RecurrentSoftmaxAttention: the recurrent-softmax variants behind the models' attention= switch."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cottention_jax import decoding
from cottention_jax import recurrent_softmax as rs
from cottention_jax.layers import RecurrentSoftmaxAttention
from cottention_jax.models import GPT, attention_names, bert_config, gpt_config
from tests._util import fresh_key, padding_mask, rel_error, stepwise_logits

HI = jax.lax.Precision.HIGHEST


def _shapes(model):
    return {p: tuple(v[...].shape) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("variant", ["taylor2", "taylor2-gate", "taylor2-rms", "linear-elu"])
def test_layer_is_projections_around_the_op(variant):
    b, t, f = 2, 13, 32
    layer = RecurrentSoftmaxAttention(
        num_heads=4, in_features=f, num_kv_heads=2, variant=variant, use_bias=False, rngs=nnx.Rngs(0)
    )
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask("left", b, t)
    proj = lambda lin: jnp.einsum("btf,fhd->bthd", x, lin.kernel[...], precision=HI)  # noqa: E731
    gate = (
        None
        if layer.gate is None
        else jnp.einsum("btf,fhd->bthd", x, layer.gate.kernel[...], precision=HI) + layer.gate.bias[...]
    )
    o = rs.attention(variant, proj(layer.query), proj(layer.key), proj(layer.value), padding_mask=mask, gate=gate)
    if layer.norm_scale is not None:
        o = o * layer.norm_scale[...]
    expected = jnp.einsum("bthd,hdf->btf", o, layer.out.kernel[...], precision=HI)
    assert rel_error(layer(x, padding_mask=mask), expected) <= 1e-5


def test_switch_accepts_every_variant_and_only_adds_its_own_parameters():
    names = attention_names()
    assert {"cosine", "softmax", "taylor2", "taylor2-l2norm", "linear-elu"} <= set(names)
    base = _shapes(GPT(gpt_config("tiny", attention="softmax"), rngs=nnx.Rngs(0)))
    assert _shapes(GPT(gpt_config("tiny", attention="taylor2"), rngs=nnx.Rngs(0))) == base
    gated = _shapes(GPT(gpt_config("tiny", attention="taylor2-gate"), rngs=nnx.Rngs(0)))
    extra = {p for p in gated if p not in base}
    assert extra and all("gate" in p for p in extra)
    assert {p: s for p, s in gated.items() if p in base} == base


@pytest.mark.parametrize("attention", ["taylor2", "taylor2-gate", "linear-cosine"])
def test_variant_gpt_decodes_like_its_parallel_form(attention):
    model = GPT(gpt_config("tiny", attention=attention, num_kv_heads=2), rngs=nnx.Rngs(3))
    tokens = jax.random.randint(fresh_key(), (2, 16), 0, 256)
    parallel = model(tokens)
    assert rel_error(stepwise_logits(model, tokens, 6, max_length=16), parallel[:, 5:15]) <= 1e-5


def test_variants_without_an_rnn_state_or_bidirectional_use_are_refused():
    model = GPT(gpt_config("tiny", attention="exp"), rngs=nnx.Rngs(0))
    assert bool(jnp.all(jnp.isfinite(model(jnp.ones((1, 8), jnp.int32)))))  # trains fine in parallel form
    with pytest.raises(ValueError, match="no finite RNN state"):
        decoding.generate(model, jnp.ones((1, 4), jnp.int32), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"attention must be one of \('cosine', 'softmax'\); got 'taylor2'"):
        bert_config("tiny", attention="taylor2")
