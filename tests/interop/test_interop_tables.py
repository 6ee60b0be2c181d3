"""The converters' tables and round trips without PyTorch: every parameter of our models has exactly one
PyTorch name, export then import is the identity, and what has no GPT-J / BERT form is refused.
(tests/test_interop.py checks the same converters against transformers itself.)"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cottention_jax
from cottention_jax import attention_fn, cli, inference, interop
from cottention_jax.interop.mapping import _expand, _path
from cottention_jax.models import GPT, Bert, bert_config, gpt_config
from tests._util import fresh_key


def _param_paths(model):
    return {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("attention", ["softmax", "cosine"])
def test_the_tables_cover_every_parameter_once(attention):
    gpt = GPT(gpt_config("tiny", attention=attention), rngs=nnx.Rngs(0))
    parts = ("base", "cosine") if attention == "cosine" else ("base",)
    entries = _expand(interop.GPTJ_PARAMETERS, gpt.config.num_layers, parts)
    assert sorted(_path(e.ours) for e in entries) == sorted(_param_paths(gpt))
    assert len({e.hf for e in entries}) == len(entries)
    bert = Bert(bert_config("tiny", attention=attention), rngs=nnx.Rngs(0))
    entries = _expand(interop.BERT_PARAMETERS, bert.config.num_layers, parts + ("mlm", "pooler", "classifier"))
    assert sorted(_path(e.ours) for e in entries) == sorted(_param_paths(bert))
    assert len({e.hf for e in entries}) == len(entries)


def _randomized(model):
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var[...] = jax.random.normal(fresh_key(), var[...].shape, var[...].dtype)
    return model


@pytest.mark.parametrize("attention", ["softmax", "cosine"])
def test_export_then_import_is_the_identity(attention, tmp_path):
    gpt = _randomized(GPT(gpt_config("tiny", attention=attention, activation="gelu"), rngs=nnx.Rngs(0)))
    gpt.eval()
    state = interop.gptj_state_dict(gpt)
    back = interop.load_gptj(state, interop.hf_config_from_gpt(gpt.config))
    assert back.config == gpt.config
    tokens = jax.random.randint(fresh_key(), (2, 7), 0, gpt.config.vocab_size)
    np.testing.assert_array_equal(back(tokens), gpt(tokens))
    with pytest.warns(UserWarning) if attention == "cosine" else contextlib.nullcontext():
        interop.save_gptj(gpt, tmp_path / "gptj")
    np.testing.assert_array_equal(interop.load_gptj(tmp_path / "gptj")(tokens), gpt(tokens))
    bert = _randomized(Bert(bert_config("tiny", attention=attention, num_labels=3), rngs=nnx.Rngs(0)))
    bert.eval()
    for architecture in ("BertForMaskedLM", "BertForSequenceClassification", "BertModel"):
        interop.save_bert(bert, tmp_path / architecture, architecture)
    with pytest.warns(UserWarning, match="pooler"):
        mlm = interop.load_bert(tmp_path / "BertForMaskedLM")
    with pytest.warns(UserWarning, match="mlm_bias"):
        classifier = interop.load_bert(tmp_path / "BertForSequenceClassification")
    with pytest.warns(UserWarning, match="classifier"):
        encoder = interop.load_bert(tmp_path / "BertModel")  # names without "bert."
    ids = jax.random.randint(fresh_key(), (2, 9), 0, bert.config.vocab_size)
    hidden = bert(ids)
    np.testing.assert_array_equal(mlm.mlm_logits(mlm(ids)), bert.mlm_logits(hidden))
    np.testing.assert_array_equal(classifier.classify(classifier(ids)), bert.classify(hidden))
    np.testing.assert_array_equal(encoder(ids), hidden)


def test_what_has_no_transformers_form_is_refused(tmp_path):
    for overrides, message in (
        (dict(num_kv_heads=2), "no grouped-query attention"),
        (dict(attention="taylor2"), "attention='taylor2'"),
        (dict(tie_embeddings=True), "tie_embeddings=True"),
        (dict(rope_base=500.0), "rope_base=500.0"),
    ):
        model = GPT(gpt_config("tiny", **overrides), rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match=f"no GPT-J form.*{message}"):
            interop.gptj_state_dict(model)
    with pytest.raises(ValueError, match="architecture must be one of"):
        interop.bert_state_dict(Bert(bert_config("tiny"), rngs=nnx.Rngs(0)), "BertForPreTraining")
    with pytest.raises(ValueError, match="rotary_dim None"):
        interop.gpt_config_from_hf({"model_type": "gptj", "rotary_dim": None})
    with pytest.raises(ValueError, match="activation_function 'quick_gelu' has no counterpart"):
        interop.gpt_config_from_hf({"rotary_dim": 8, "activation_function": "quick_gelu"})
    with pytest.raises(FileNotFoundError, match="holds none of model.safetensors"):
        interop.read_state_dict(tmp_path)
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="neither a .safetensors nor a torch"):
        interop.read_state_dict(tmp_path / "weights.npz")


def test_bfloat16_parameters_are_written_as_float32(tmp_path):
    gpt = GPT(gpt_config("tiny", attention="softmax", param_dtype="bfloat16"), rngs=nnx.Rngs(0))
    interop.save_gptj(gpt, tmp_path)
    state = interop.read_state_dict(tmp_path)
    assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
    back = interop.load_gptj(tmp_path, param_dtype="bfloat16")
    assert back.blocks[0].attn.query.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(back.blocks[0].attn.query.kernel[...], gpt.blocks[0].attn.query.kernel[...])


def test_every_exported_name_of_the_user_facing_modules_exists():
    assert cottention_jax.load_model is inference.load_model
    for module in (interop, attention_fn, inference, cli, cottention_jax):
        assert all(hasattr(module, name) for name in module.__all__)
