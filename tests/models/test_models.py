"""GPT and BERT: parameter counts, attention switch, padding invariance, gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax.models import BERT_PRESETS, GPT, GPT_PRESETS, Bert, bert_config, gpt_config
from cottention_jax.objectives import classification_objective, gpt_objective, mlm_objective
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
    layer = 2 * c.d_model + attn + mlp  # LN + attention + MLP
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


@pytest.mark.parametrize(
    "make",
    [
        lambda a: GPT(gpt_config("tiny", attention=a), rngs=nnx.Rngs(0)),
        lambda a: Bert(bert_config("tiny", attention=a), rngs=nnx.Rngs(0)),
    ],
    ids=["gpt", "bert"],
)
def test_attention_switch_changes_only_the_stabilizers(make):
    cosine, softmax = (_param_shapes(lambda a=a: make(a)) for a in ("cosine", "softmax"))
    stabilizers = {p: s for p, s in cosine.items() if p[-1] == "stabilizer"}
    assert len(stabilizers) == 2 and all(s == (4,) for s in stabilizers.values())  # one per layer, per head
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
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((2, 15))}
    grads = nnx.grad(lambda m: gpt_objective(m, batch)[0])(model)
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

    batch = {
        "input_ids": ids,
        "segment_ids": seg,
        "padding_mask": jnp.ones((2, 16), bool),
        "mlm_labels": ids,
        "mlm_weights": weights,
        "labels": jnp.array([0, 1]),
        "weights": jnp.ones(2),
    }

    def loss(m):
        return mlm_objective(m, batch)[0] + classification_objective(m, batch)[0]

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


def test_remat_and_loss_chunk_are_validated():
    for make in (gpt_config, bert_config):
        with pytest.raises(ValueError, match=r"remat must be one of \('none', 'block', 'dots'\); got 'all'"):
            make("tiny", remat="all")
        for bad in (-1, 2.5, True, "64"):
            with pytest.raises(ValueError, match=r"loss_chunk must be an int >= 0 .*got " + repr(bad)):
                make("tiny", loss_chunk=bad)
        assert make("tiny", remat="dots", loss_chunk=64).loss_chunk == 64


# Same losses and gradients, every parameter, with and without the memory savings. Tolerance 1e-5
# relative: remat recomputes the same float32 operations (XLA may fuse them differently) and the
# chunked loss sums the same per-position losses in another order, both a few float32 epsilons
# (1.2e-7) apart after the reductions; a real fault (another dropout mask, a chunk dropped, a padded
# position counted) is 1e-2 or more.


def _same_loss_and_gradients(model_a, model_b, objective, batch):
    (loss_a, sums_a), g_a = nnx.value_and_grad(objective, has_aux=True)(model_a, batch)
    (loss_b, sums_b), g_b = nnx.value_and_grad(objective, has_aux=True)(model_b, batch)
    assert rel_error(loss_a, loss_b) <= 1e-5
    for k in sums_b:
        assert abs(float(sums_a[k]) - float(sums_b[k])) <= 1e-5 * max(abs(float(sums_b[k])), 1.0), k
    flat_a, flat_b = dict(nnx.to_flat_state(g_a)), dict(nnx.to_flat_state(g_b))
    assert flat_a.keys() == flat_b.keys()
    for path in flat_b:
        assert rel_error(flat_a[path][...], flat_b[path][...]) <= 1e-5, path


def _gpt_batch(cfg, b=2, t=24):
    tokens = jax.random.randint(fresh_key(), (b, t + 1), 0, cfg.vocab_size)
    weights = jax.random.bernoulli(fresh_key(), 0.7, (b, t)).astype(jnp.float32)  # some positions left out
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def _mlm_batch(cfg, b=3, t=20):
    mask = jnp.arange(t)[None, :] < jnp.array([[t], [t - 6], [t - 11]])  # right padding
    return {
        "input_ids": jax.random.randint(fresh_key(), (b, t), 0, cfg.vocab_size),
        "segment_ids": jnp.zeros((b, t), jnp.int32),
        "padding_mask": mask,
        "mlm_labels": jax.random.randint(fresh_key(), (b, t), 0, cfg.vocab_size),
        "mlm_weights": (jax.random.bernoulli(fresh_key(), 0.3, (b, t)) & mask).astype(jnp.float32),
    }


# (remat, loss_chunk) against ("none", 0). A chunk holds loss_chunk // B positions of each row:
# GPT 2 x 24: 10 -> 5 and 32 -> 16 per row leave a padded last chunk, 48 is one chunk;
# BERT 3 x 20: 9 -> 3 per row leaves a padded tail, 32 -> 10 divides, 60 is one chunk
@pytest.mark.parametrize(
    "remat,loss_chunk", [("block", 0), ("dots", 0), ("none", 10), ("none", 32), ("none", 48), ("dots", 10)]
)
def test_gpt_savings_keep_losses_and_gradients(remat, loss_chunk):
    cfg = gpt_config("tiny", dropout_rate=0.1)  # dropout on: remat must redraw the same masks
    batch = _gpt_batch(cfg)
    plain = GPT(cfg, rngs=nnx.Rngs(params=3, dropout=4))
    saving = GPT(dataclasses.replace(cfg, remat=remat, loss_chunk=loss_chunk), rngs=nnx.Rngs(params=3, dropout=4))
    for _ in range(2):  # and the dropout streams advance alike
        _same_loss_and_gradients(saving, plain, gpt_objective, batch)
    dropped = plain.hidden(batch["inputs"])
    plain.eval()
    assert rel_error(dropped, plain.hidden(batch["inputs"])) > 1e-2  # dropout was really active


@pytest.mark.parametrize("remat,loss_chunk", [("block", 0), ("dots", 0), ("none", 9), ("none", 60), ("block", 32)])
def test_bert_mlm_savings_keep_losses_and_gradients(remat, loss_chunk):
    cfg = bert_config("tiny", dropout_rate=0.1)
    batch = _mlm_batch(cfg)
    plain = Bert(cfg, rngs=nnx.Rngs(params=5, dropout=6))
    saving = Bert(dataclasses.replace(cfg, remat=remat, loss_chunk=loss_chunk), rngs=nnx.Rngs(params=5, dropout=6))
    for _ in range(2):
        _same_loss_and_gradients(saving, plain, mlm_objective, batch)
    dropped = plain(batch["input_ids"], padding_mask=batch["padding_mask"])
    plain.eval()
    assert rel_error(dropped, plain(batch["input_ids"], padding_mask=batch["padding_mask"])) > 1e-2


def test_decoding_a_remat_model_matches_its_parallel_pass():
    # decode mode writes the caches, so it runs the blocks without remat; the parallel pass uses it
    cfg = gpt_config("tiny", remat="dots")
    model = GPT(cfg, rngs=nnx.Rngs(7))
    tokens = jax.random.randint(fresh_key(), (2, 12), 0, cfg.vocab_size)
    parallel = model(tokens)
    assert rel_error(model.logits(model.hidden(tokens)), parallel) == 0.0
    model.init_cache(2, 16)
    prefill = model(tokens[:, :8], decode=True)  # writes the caches
    steps = [model(tokens[:, i : i + 1], decode=True) for i in range(8, 12)]
    assert rel_error(jnp.concatenate([prefill, *steps], axis=1), parallel) <= 1e-5


def test_public_api_of_models_decoding_and_layers():
    """What users import is there (more may be added), each `__all__` name exists, and nothing
    private is exported."""
    from cottention_jax import decoding, layers, models

    wanted = {
        models: {
            "Bert",
            "BertConfig",
            "BERT_PRESETS",
            "bert_config",
            "GPT",
            "GPTConfig",
            "GPT_PRESETS",
            "gpt_config",
            "AttentionConfig",
            "attention_names",
            "make_attention",
        },
        decoding: {"generate", "make_decode_loop", "make_decode_step", "prefill", "sample_logits"},
        layers: {
            "CosineAttention",
            "SoftmaxAttention",
            "RecurrentSoftmaxAttention",
            "apply_rope",
            "positions_from_mask",
        },
    }
    for module, names in wanted.items():
        assert names <= set(module.__all__), (module.__name__, names - set(module.__all__))
        assert all(hasattr(module, name) and not name.startswith("_") for name in module.__all__)
    import cottention_jax

    assert cottention_jax.CosineAttention is layers.CosineAttention
    assert cottention_jax.SoftmaxAttention is layers.SoftmaxAttention


def test_gpt_and_bert_configs_share_the_attention_config():
    from cottention_jax.models.common import AttentionConfig, TransformerConfig

    gpt, bert = gpt_config("tiny", attention="softmax", num_kv_heads=2), bert_config("tiny", stabilize="query")
    assert isinstance(gpt, TransformerConfig) and isinstance(bert, TransformerConfig)
    attention_fields = {f.name for f in dataclasses.fields(AttentionConfig)}
    for cfg in (gpt, bert):  # declared once, in the base classes: the models add only their own fields
        own = {f.name for f in dataclasses.fields(cfg)} - {f.name for f in dataclasses.fields(TransformerConfig)}
        assert own == (
            {"rotary_dim", "rope_base", "tie_embeddings"}
            if cfg is gpt
            else {"type_vocab_size", "num_labels", "positions"}
        )
        assert set(dataclasses.asdict(cfg.attention_config())) == attention_fields
    assert gpt.attention_config() == AttentionConfig(d_model=64, num_heads=4, num_kv_heads=2, attention="softmax")
    assert bert.attention_config().stabilize == "query"


def test_make_attention_passes_each_layer_only_its_own_options():
    from cottention_jax import recurrent_softmax as rs
    from cottention_jax.layers import CosineAttention, RecurrentSoftmaxAttention, SoftmaxAttention
    from cottention_jax.models import make_attention
    from cottention_jax.models.common import AttentionConfig

    every = dict(
        num_heads=2,
        in_features=8,
        causal=True,
        stabilizer_init=0.3,
        stabilize="query",
        implementation=None,
        interpret=True,
        sequence_axis=None,
        rngs=nnx.Rngs(0),
    )
    cosine = make_attention("cosine", **every)
    assert isinstance(cosine, CosineAttention) and cosine.stabilize == "query" and cosine.interpret
    softmax = make_attention("softmax", **every)
    assert isinstance(softmax, SoftmaxAttention) and softmax.interpret
    recurrent = make_attention("taylor2", **every)
    assert isinstance(recurrent, RecurrentSoftmaxAttention) and recurrent.variant == rs.resolve_variant("taylor2")
    with pytest.raises(TypeError, match="stabilize"):  # the layers themselves take only their own
        SoftmaxAttention(num_heads=2, in_features=8, stabilize="value", rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="implementation"):
        RecurrentSoftmaxAttention(num_heads=2, in_features=8, implementation=None, rngs=nnx.Rngs(0))
    layer = make_attention(
        AttentionConfig(d_model=16, num_heads=4, num_kv_heads=2, stabilizer_init=0.25), causal=False, rngs=nnx.Rngs(0)
    )
    assert (layer.in_features, layer.num_heads, layer.num_kv_heads) == (16, 4, 2)
    np.testing.assert_allclose(layer.stabilizer[...], 0.25)


def test_config_literal_types_name_what_the_checks_accept():
    import typing

    from cottention_jax import configs, ops, softmax_ops
    from cottention_jax.layers.cosine import CosineImplementation, Stabilize
    from cottention_jax.layers.softmax import SoftmaxImplementation
    from cottention_jax.models.common import AttentionKind, Implementation, attention_names

    assert set(typing.get_args(AttentionKind)) == set(attention_names())
    assert set(typing.get_args(Stabilize)) == set(ops.STABILIZE_MODES)
    assert set(typing.get_args(CosineImplementation)) == set(ops.IMPLEMENTATIONS)
    assert set(typing.get_args(SoftmaxImplementation)) == set(softmax_ops.IMPLEMENTATIONS)
    hints = typing.get_type_hints(configs.TrainConfig)
    assert typing.get_args(hints["kind"]) == configs.TASK_KINDS
    assert typing.get_args(hints["sharding"]) == ("none", "data", "fsdp")
    assert typing.get_args(typing.get_type_hints(configs.OptimConfig)["schedule"]) == ("cosine", "linear", "constant")
    gpt_hints = typing.get_type_hints(type(gpt_config("tiny")))
    assert gpt_hints["attention"] == AttentionKind and gpt_hints["implementation"] == Implementation | None


def test_flat_override_keys_and_old_saved_configs_still_work():
    """The attention fields moved into shared base classes; what users type (--set model.attention=...)
    and the config.json of runs saved before that are unchanged."""
    from cottention_jax.configs import apply_overrides, from_dict, to_dict, train_preset

    cfg = apply_overrides(
        train_preset("gpt-tiny"),
        [
            "model.attention=softmax",
            "model.implementation=xla",
            "model.num_kv_heads=2",
            "model.stabilize=query",
            "model.interpret=true",
            "model.remat=dots",
        ],
    )
    m = cfg.model
    assert (m.attention, m.implementation, m.num_kv_heads, m.stabilize, m.interpret, m.remat) == (
        "softmax",
        "xla",
        2,
        "query",
        True,
        "dots",
    )
    assert apply_overrides(cfg, ["model.implementation=none"]).model.implementation is None
    with pytest.raises(ValueError, match=r"attention must be one of"):
        apply_overrides(cfg, ["model.attention=cosin"])
    # a GPT model section as runs saved it before the shared config classes (field order of then)
    old_model = {
        "vocab_size": 512,
        "num_layers": 2,
        "d_model": 64,
        "num_heads": 4,
        "num_kv_heads": None,
        "ff_dim": 256,
        "activation": "gelu_tanh",
        "rotary_dim": 8,
        "rope_base": 10000.0,
        "max_len": 64,
        "attention": "cosine",
        "stabilizer_init": 0.5,
        "stabilize": "value",
        "implementation": None,
        "interpret": False,
        "sequence_axis": None,
        "dropout_rate": 0.0,
        "layer_norm_eps": 1e-05,
        "tie_embeddings": False,
        "dtype": "float32",
        "param_dtype": "float32",
        "remat": "none",
        "loss_chunk": 0,
        "checkify_ids": False,
    }
    saved = {**to_dict(train_preset("gpt-tiny")), "model": old_model}
    loaded = from_dict(saved)
    # fields added since then take their defaults (the paper's learned stabilizer)
    assert dataclasses.asdict(loaded.model) == {**old_model, "stabilizer": "learned"}
    assert to_dict(from_dict(to_dict(loaded))) == to_dict(loaded)
