"""Silently wrong results, made loud: invalid configs, out-of-range ids, decoding past the KV cache.

Each probe here used to run and return something wrong (NaN logits, the embedding of
another token, logits ~1 away from the parallel forward pass, a crash after training);
now it is a ValueError naming the argument or field, or, under jit, a checkify error or
NaN output instead of a plausible-looking one.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

from cottention_jax import decoding
from cottention_jax.configs import OptimConfig, apply_overrides, train_preset
from cottention_jax.models import GPT, Bert, bert_config, gpt_config
from tests._util import fresh_key, rel_error

# ----------------------------------------------------------------------------- model configs

BAD_MODEL_FIELDS = [
    ("num_layers", 0),
    ("num_layers", -2),
    ("vocab_size", 0),
    ("d_model", -64),
    ("max_len", -1),
    ("max_len", 0),
    ("ff_dim", -1),
    ("num_heads", 0),
    ("num_kv_heads", 3),
    ("num_kv_heads", 0),
    ("dropout_rate", 1.0),
    ("dropout_rate", -0.1),
    ("dropout_rate", math.nan),
    ("stabilizer_init", math.nan),
    ("stabilizer_init", math.inf),
    ("layer_norm_eps", 0.0),
    ("dtype", "int32"),
    ("param_dtype", "float64x"),
    ("stabilize", "key"),
    ("checkify_ids", "yes"),
    ("num_layers", 2.0),
]


@pytest.mark.parametrize("make, name", [(gpt_config, "GPTConfig"), (bert_config, "BertConfig")])
@pytest.mark.parametrize("field, value", BAD_MODEL_FIELDS)
def test_invalid_model_configs_are_refused_naming_the_field(make, name, field, value):
    with pytest.raises(ValueError, match=rf"{name}\.{field} must be"):
        make("tiny", **{field: value})


@pytest.mark.parametrize("field, value", [("rotary_dim", 3), ("rotary_dim", 32), ("rope_base", -1.0)])
def test_invalid_gpt_only_fields(field, value):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field} must be"):
        gpt_config("tiny", **{field: value})


@pytest.mark.parametrize("field", ["type_vocab_size", "num_labels"])
def test_invalid_bert_only_fields(field):
    with pytest.raises(ValueError, match=rf"BertConfig\.{field} must be an int >= 1; got 0"):
        bert_config("tiny", **{field: 0})


def test_gpt_refuses_inputs_longer_than_max_len_outside_decode_mode():
    model = GPT(gpt_config("tiny", max_len=16), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(fresh_key(), (1, 17), 0, 256)
    with pytest.raises(ValueError, match=r"tokens is longer than max_len=16; got tokens.shape=\(1, 17\)"):
        model(tokens)
    decoding.prefill(model, tokens)  # decoding has no such bound: the RNN state has no length


# ----------------------------------------------------------------------------- token and segment ids


def _gpt(**overrides):
    return GPT(gpt_config("tiny", **overrides), rngs=nnx.Rngs(3))


@pytest.mark.parametrize("bad", [256, 1000, -1])
def test_out_of_range_token_ids_are_refused_eagerly(bad):
    model = _gpt()
    tokens = jax.random.randint(fresh_key(), (2, 9), 0, 256).at[1, 4].set(bad)
    with pytest.raises(ValueError, match=rf"tokens must be ids in \[0, 256\); got {bad} at position \(1, 4\)"):
        model(tokens)
    with pytest.raises(ValueError, match=rf"prompt must .*got {bad} at position \(1, 4\)"):
        decoding.prefill(model, tokens)
    step, cache = decoding.make_decode_step(model)
    with pytest.raises(ValueError, match=rf"tokens must be ids in \[0, 256\); got {bad}"):
        step(cache, tokens[:, 4])


def test_ids_at_padded_positions_are_never_read():
    """Padding may hold anything (a -1 pad id, say): real logits are those of any valid padding."""
    model = _gpt(attention="softmax")
    tokens = jax.random.randint(fresh_key(), (2, 12), 0, 256)
    mask = jnp.arange(12)[None, :] >= jnp.array([[3], [0]])
    reference = model(tokens, padding_mask=mask)
    odd = model(jnp.where(mask, tokens, -1), padding_mask=mask)
    assert rel_error(jnp.where(mask[..., None], odd, 0), jnp.where(mask[..., None], reference, 0)) <= 1e-6


def test_under_jit_an_out_of_range_id_gives_nan_never_another_tokens_logits():
    """Tracing cannot see the ids: -1 used to act as the last id, 256 as all-NaN; now both are NaN
    from their position on (causal), and earlier positions are as before."""
    model = _gpt()
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))
    tokens = jax.random.randint(fresh_key(), (1, 10), 0, 256)
    clean = run(state, tokens)
    for bad in (-1, 256):
        out = run(state, tokens.at[0, 6].set(bad))
        assert bool(jnp.all(jnp.isnan(out[0, 6:]))), bad
        assert rel_error(out[0, :6], clean[0, :6]) <= 1e-6, bad


def test_checkify_ids_checks_under_jit():
    model = _gpt(checkify_ids=True)
    graphdef, state = nnx.split(model)
    checked = checkify.checkify(jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens)))
    tokens = jax.random.randint(fresh_key(), (2, 8), 0, 256)
    err, logits = checked(state, tokens)
    err.throw()  # valid ids: no error
    assert rel_error(logits, model(tokens)) <= 1e-6
    err, _ = checked(state, tokens.at[0, 3].set(300))
    with pytest.raises(checkify.JaxRuntimeError, match=r"tokens must be ids in \[0, 256\); got 300"):
        err.throw()


def test_bert_input_and_segment_ids_are_checked():
    bert = Bert(bert_config("tiny", dropout_rate=0.0), rngs=nnx.Rngs(0))
    ids = jax.random.randint(fresh_key(), (2, 10), 0, 256)
    segments = jnp.zeros_like(ids).at[:, 5:].set(1)
    bert(ids, segment_ids=segments)
    with pytest.raises(ValueError, match=r"segment_ids must be ids in \[0, 2\); got 2 at position \(0, 7\)"):
        bert(ids, segment_ids=segments.at[0, 7].set(2))
    with pytest.raises(ValueError, match=r"input_ids must be ids in \[0, 256\); got -3"):
        bert(ids.at[1, 1].set(-3))
    graphdef, state = nnx.split(bert)
    run = jax.jit(lambda state, ids, seg: nnx.merge(graphdef, state)(ids, segment_ids=seg))
    assert bool(jnp.all(jnp.isnan(run(state, ids, segments.at[0, 7].set(2))[0])))  # bidirectional: the row


@pytest.mark.parametrize("bad", [-1, 256, 300])
def test_generate_refuses_out_of_range_prompt_ids(bad):
    """generate used to return all-zero tokens after a prompt holding an id >= vocab."""
    with pytest.raises(ValueError, match=rf"prompt must .*got {bad} at position \(0, 2\)"):
        decoding.generate(_gpt(), jnp.array([[5, 6, bad, 7]]), max_new_tokens=2)
    mask = jnp.array([[False, False, True, True]])  # at a padded position it is never read
    tokens = decoding.generate(_gpt(), jnp.array([[bad, bad, 6, 7]]), prompt_mask=mask, max_new_tokens=2)
    assert tokens.shape == (1, 2)


# ----------------------------------------------------------------------------- the softmax KV cache


def test_decode_steps_past_the_kv_cache_are_refused():
    """prefill sizes the cache to the prompt (max_length defaults to its length); the next step used
    to write past it (cache_index 6 of 4 slots) and gave logits ~1 away from the parallel pass."""
    model = _gpt(attention="softmax")
    tokens = jax.random.randint(fresh_key(), (2, 6), 0, 256)
    decoding.prefill(model, tokens[:, :4])
    step, cache = decoding.make_decode_step(model)
    with pytest.raises(
        ValueError,
        match=r"KV cache of blocks\.0\.attn holds 4 positions, 4 of them used: "
        r"1 more token\(s\) do not fit",
    ):
        step(cache, tokens[:, 4])
    # with room, the steps equal the parallel forward pass
    parallel = model(tokens)
    decoding.prefill(model, tokens[:, :4], max_length=6)
    step, cache = decoding.make_decode_step(model)
    logits, cache = step(cache, tokens[:, 4])
    assert rel_error(logits, parallel[:, 4]) <= 1e-5
    with pytest.raises(ValueError, match=r"holds 6 positions, 5 of them used: 2 more"):
        step(cache, tokens[:, 4:6])


def test_under_jit_an_overfull_kv_cache_gives_nan_logits():
    model = _gpt(attention="softmax")
    tokens = jax.random.randint(fresh_key(), (1, 5), 0, 256)
    decoding.prefill(model, tokens[:, :4])
    step, cache = decoding.make_decode_step(model)
    logits, _ = jax.jit(step)(cache, tokens[:, 4])  # traced cache: the eager check cannot run
    assert bool(jnp.all(jnp.isnan(logits)))


# ----------------------------------------------------------------------------- training configs


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.learning_rate=nan", r"OptimConfig\.learning_rate must be a finite number > 0; got nan"),
        ("optim.learning_rate=-1", r"OptimConfig\.learning_rate must be a finite number > 0; got -1"),
        ("optim.learning_rate=inf", r"OptimConfig\.learning_rate .* got inf"),
        ("optim.learning_rate=0", r"OptimConfig\.learning_rate"),
        ("optim.b1=1.0", r"OptimConfig\.b1 must be a number in \[0, 1\)"),
        ("optim.b2=-0.5", r"OptimConfig\.b2"),
        ("optim.eps=0", r"OptimConfig\.eps must be a finite number > 0"),
        ("optim.weight_decay=-0.1", r"OptimConfig\.weight_decay"),
        ("optim.grad_clip=nan", r"OptimConfig\.grad_clip"),
        ("optim.warmup_steps=-1", r"OptimConfig\.warmup_steps must be an int >= 0"),
        ("optim.end_lr_ratio=2", r"OptimConfig\.end_lr_ratio must be a number in \[0, 1\]"),
        ("optim.schedule=exponential", r"OptimConfig\.schedule must be one of"),
        ("optim.accumulate_steps=0", r"OptimConfig\.accumulate_steps must be an int >= 1; got 0"),
        ("eval_batches=-1", r"TrainConfig\.eval_batches must be an int >= 0 \(0: the whole split\); got -1"),
        ("sample_tokens=-5", r"TrainConfig\.sample_tokens must be an int >= 0"),
        ("sample_prompt=", r"TrainConfig\.sample_prompt must be a non-empty string when sample_tokens > 0"),
        ("model.num_layers=0", r"GPTConfig\.num_layers must be an int >= 1; got 0"),
        ("model.dropout_rate=1.5", r"GPTConfig\.dropout_rate must be in \[0, 1\)"),
    ],
)
def test_invalid_training_values_are_refused_when_the_config_is_built(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(train_preset("gpt-tiny"), [override])


def test_a_sequence_longer_than_the_model_is_refused_before_any_work(tmp_path):
    from cottention_jax.train import train_and_evaluate

    cfg = apply_overrides(train_preset("gpt-tiny"), ["data.seq_len=128", f"data.data_dir={tmp_path / 'data'}"])
    with pytest.raises(ValueError, match=r"data\.seq_len \(128\) must be <= model\.max_len \(64\)"):
        train_and_evaluate(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "data").exists()


def test_valid_edge_values_are_accepted():
    cfg = apply_overrides(
        train_preset("gpt-tiny"),
        [
            "eval_batches=0",
            "sample_tokens=0",
            "sample_prompt=",
            "optim.grad_clip=0",
            "optim.warmup_steps=0",
            "optim.end_lr_ratio=0",
            "model.dropout_rate=0",
        ],
    )
    assert cfg.eval_batches == 0 and cfg.sample_prompt == "" and cfg.optim.grad_clip == 0
    assert dataclasses.replace(OptimConfig(), b1=0.0).b1 == 0.0
    assert all(np.isfinite([cfg.optim.learning_rate, cfg.optim.eps]))


def test_a_model_vocab_size_override_marks_it_as_the_users():
    """Training refuses a user's model.vocab_size that is not the tokenizer's (tests/test_train.py), and fits
    the preset's own: the override is what tells them apart."""
    size = int(jax.random.randint(fresh_key(), (), 300, 5000))
    assert train_preset("gpt-tiny").vocab_from_tokenizer is True
    assert train_preset("gpt-tiny", [f"data.vocab_size={size}"]).vocab_from_tokenizer is True
    users = train_preset("gpt-tiny", [f"model.vocab_size={size}"])
    assert users.model.vocab_size == size and users.vocab_from_tokenizer is False
    assert train_preset("gpt-tiny", [f"model.vocab_size={size}", "vocab_from_tokenizer=true"]).vocab_from_tokenizer
    for name in ("vocab_from_tokenizer", "init_from_partial"):
        with pytest.raises(ValueError, match=rf"TrainConfig\.{name} must be a bool; got 'yes'"):
            dataclasses.replace(train_preset("gpt-tiny"), **{name: "yes"})
