"""GPT and BERT: parameter counts, attention switch, padding invariance, gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax.models import (BERT_PRESETS, GPT_PRESETS, GPT, Bert, bert_config, classification_loss,
                                   gpt_config, lm_loss, mlm_loss)
from tests._util import fresh_key, rel_error


def _param_shapes(model_fn):
    """{path: shape} of a model's parameters, built abstractly (no memory for big presets)."""
    abstract = nnx.eval_shape(model_fn)
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def _count(shapes):
    return sum(int(np.prod(s)) for s in shapes.values())


def gpt_param_count(c):
    """Analytic count for the GPT-J-style decoder."""
    hd = c.d_model // c.num_heads
    kv = c.num_kv_heads or c.num_heads
    attn = c.d_model * hd * (2 * c.num_heads + 2 * kv) + (c.num_heads if c.attention == "cosine" else 0)
    mlp = 2 * c.d_model * c.ff_dim + c.ff_dim + c.d_model
    layer = 2 * c.d_model + attn + mlp                             # LN + attention + MLP
    head = 0 if c.tie_embeddings else c.d_model * c.vocab_size + c.vocab_size
    return c.vocab_size * c.d_model + c.num_layers * layer + 2 * c.d_model + head


def bert_param_count(c):
    """Analytic count for BERT with MLM and classification heads."""
    d = c.d_model
    emb = (c.vocab_size + c.max_len + c.type_vocab_size) * d + 2 * d
    attn = 4 * (d * d + d) + (c.num_heads if c.attention == "cosine" else 0)
    layer = attn + 2 * d + (2 * d * c.ff_dim + c.ff_dim + d) + 2 * d
    heads = (d * d + d + 2 * d + c.vocab_size) + (d * d + d) + (d * c.num_labels + c.num_labels)
    return emb + c.num_layers * layer + heads


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
@pytest.mark.parametrize("name", sorted(GPT_PRESETS))
def test_gpt_parameter_count(name, attention):
    cfg = gpt_config(name, attention=attention)
    assert _count(_param_shapes(lambda: GPT(cfg, rngs=nnx.Rngs(0)))) == gpt_param_count(cfg)


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
@pytest.mark.parametrize("name", sorted(BERT_PRESETS))
def test_bert_parameter_count(name, attention):
    cfg = bert_config(name, attention=attention)
    assert _count(_param_shapes(lambda: Bert(cfg, rngs=nnx.Rngs(0)))) == bert_param_count(cfg)


def test_paper_presets():
    g = GPT_PRESETS["gptj-300m"]
    assert (g.num_layers, g.d_model, g.num_heads, g.ff_dim, g.rotary_dim) == (20, 1024, 16, 3072, 64)
    assert 290e6 < gpt_param_count(g) < 320e6
    b = BERT_PRESETS["base"]
    assert (b.num_layers, b.d_model, b.num_heads, b.ff_dim) == (12, 768, 12, 3072)
    assert 105e6 < bert_param_count(b) < 115e6


@pytest.mark.parametrize("make", [lambda a: GPT(gpt_config("tiny", attention=a), rngs=nnx.Rngs(0)),
                                  lambda a: Bert(bert_config("tiny", attention=a), rngs=nnx.Rngs(0))],
                         ids=["gpt", "bert"])
def test_attention_switch_changes_only_the_stabilizers(make):
    cosine, softmax = (_param_shapes(lambda a=a: make(a)) for a in ("cosine", "softmax"))
    stabilizers = {p: s for p, s in cosine.items() if p[-1] == "stabilizer"}
    assert len(stabilizers) == 2 and all(s == (4,) for s in stabilizers.values())   # one per layer, per head
    assert {p: s for p, s in cosine.items() if p not in stabilizers} == softmax


def test_configs_are_frozen_and_validated():
    cfg = gpt_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_layers = 3
    assert dataclasses.replace(cfg, attention="softmax").attention == "softmax"
    with pytest.raises(ValueError, match=r"attention must be one of .*'flash'"):
        gpt_config("tiny", attention="flash")
    with pytest.raises(ValueError, match=r"d_model \(64\) must be divisible by num_heads \(5\)"):
        bert_config("tiny", num_heads=5)
    with pytest.raises(ValueError, match=r"unknown preset 'huge'"):
        gpt_config("huge")


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
def test_gpt_left_padding_does_not_change_real_logits(attention):
    model = GPT(gpt_config("tiny", attention=attention), rngs=nnx.Rngs(1))
    tokens = jax.random.randint(fresh_key(), (2, 10), 0, 256)
    pad = 4
    padded = jnp.concatenate([jnp.zeros((2, pad), tokens.dtype), tokens], axis=1)
    mask = jnp.concatenate([jnp.zeros((2, pad), bool), jnp.ones((2, 10), bool)], axis=1)
    assert rel_error(model(padded, padding_mask=mask)[:, pad:], model(tokens)) <= 1e-5


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_bert_padding_does_not_change_real_outputs(attention, side):
    model = Bert(bert_config("tiny", attention=attention, dropout_rate=0.0), rngs=nnx.Rngs(2))
    ids = jax.random.randint(fresh_key(), (2, 9), 0, 256)
    zeros, ones = jnp.zeros((2, 5), ids.dtype), jnp.ones((2, 9), bool)
    if side == "left":
        padded, mask, real = jnp.concatenate([zeros, ids], 1), jnp.concatenate([~ones[:, :5], ones], 1), slice(5, None)
    else:
        padded, mask, real = jnp.concatenate([ids, zeros], 1), jnp.concatenate([ones, ~ones[:, :5]], 1), slice(0, 9)
    h_pad, h = model(padded, padding_mask=mask), model(ids)
    assert rel_error(model.mlm_logits(h_pad)[:, real], model.mlm_logits(h)) <= 1e-5
    assert rel_error(model.classify(h_pad, mask), model.classify(h)) <= 1e-5


def _nonzero_grads(grads):
    flat = nnx.to_flat_state(grads)
    return {path: float(jnp.linalg.norm(v[...])) > 0 for path, v in flat}


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
def test_gradients_reach_every_gpt_parameter(attention):
    model = GPT(gpt_config("tiny", attention=attention), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(fresh_key(), (2, 16), 0, 256)
    grads = nnx.grad(lambda m: lm_loss(m(tokens[:, :-1]), tokens[:, 1:]))(model)
    reached = _nonzero_grads(grads)
    assert all(reached.values()), [p for p, ok in reached.items() if not ok]
    if attention == "cosine":
        assert sum(p[-1] == "stabilizer" for p in reached) == 2


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
def test_gradients_reach_every_bert_parameter(attention):
    model = Bert(bert_config("tiny", attention=attention), rngs=nnx.Rngs(0))
    ids = jax.random.randint(fresh_key(), (2, 16), 0, 256)
    seg = jnp.concatenate([jnp.zeros((2, 8), jnp.int32), jnp.ones((2, 8), jnp.int32)], 1)
    weights = jax.random.bernoulli(fresh_key(), 0.3, (2, 16))

    def loss(m):
        h = m(ids, segment_ids=seg)
        return mlm_loss(m.mlm_logits(h), ids, weights) + classification_loss(m.classify(h), jnp.array([0, 1]))

    reached = _nonzero_grads(nnx.grad(loss)(model))
    # position rows beyond the sequence length are never used; everything else must move
    reached.pop(("position_embed", "embedding"))
    assert all(reached.values()), [p for p, ok in reached.items() if not ok]


def test_bfloat16_compute_runs_with_float32_params():
    cfg = gpt_config("tiny", dtype="bfloat16")
    model = GPT(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(fresh_key(), (2, 16), 0, 256)
    logits = model(tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert all(v[...].dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    full = GPT(gpt_config("tiny"), rngs=nnx.Rngs(0))
    assert rel_error(logits, full(tokens)) <= 5e-2


def test_model_input_errors():
    model = GPT(gpt_config("tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tokens must have shape \(batch, seq\)"):
        model(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"padding_mask must have the shape of tokens"):
        model(jnp.zeros((2, 3), jnp.int32), padding_mask=jnp.ones((2, 4), bool))
    bert = Bert(bert_config("tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"longer than max_len=128"):
        bert(jnp.zeros((1, 129), jnp.int32))


def test_public_api_of_models_decoding_and_layers_is_pinned():
    from cottention_jax import decoding, layers, models, rnn_attention
    assert set(models.__all__) == {"BERT_PRESETS", "Bert", "BertConfig", "bert_config", "classification_loss",
                                   "mlm_loss", "GPT", "GPT_PRESETS", "GPTConfig", "gpt_config", "lm_loss",
                                   "perplexity", "attention_names", "make_attention"}
    assert set(decoding.__all__) == {"generate", "make_decode_step", "prefill", "sample_logits"}
    assert set(layers.__all__) == {"CosineAttention", "SoftmaxAttention", "apply_rope", "positions_from_mask"}
    assert rnn_attention.__all__ == ["RecurrentSoftmaxAttention"]
    for module in (models, decoding, layers, rnn_attention):
        assert all(hasattr(module, name) for name in module.__all__)
