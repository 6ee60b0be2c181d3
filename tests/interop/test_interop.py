"""Weights from transformers: random-initialised GPT-J and BERT models built by transformers itself (in
the interop environment, tests/_interop.py) convert to our GPT and Bert with the same logits;
the official Cottention (cosine) layout matches the float64 NumPy specification; the exporters
write what transformers loads back."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from cottention_jax import interop
from tests import _interop
from tests._interop import run_interop
from tests._reference_transformers import bert_outputs, gptj_logits
from tests._util import fresh_key, rel_error

pytestmark = pytest.mark.slow
hf_checkpoints = _interop.hf_checkpoints  # the session fixture, for the tests below


def _inputs(folder):
    return {k: np.asarray(v) for k, v in np.load(folder / "inputs.npz").items()}


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def _ours_gpt(model, inputs):
    return np.asarray(model(jnp.asarray(inputs["tokens"], jnp.int32), padding_mask=jnp.asarray(inputs["mask"])))


def _ours_bert(model, inputs):
    kw = dict(segment_ids=jnp.asarray(inputs["segments"], jnp.int32), padding_mask=jnp.asarray(inputs["mask"]))
    hidden = model(jnp.asarray(inputs["tokens"], jnp.int32), **kw)
    return np.asarray(model.mlm_logits(hidden)), np.asarray(model.classify(hidden, kw["padding_mask"]))


def test_the_numpy_reference_reproduces_transformers(hf_checkpoints):
    """The float64 reference is what the cosine checks rest on: in softmax mode it gives transformers' logits."""
    folder = hf_checkpoints / "gptj"
    inputs, state = _inputs(folder), interop.read_state_dict(folder)
    ref = gptj_logits(
        state, _config(folder), inputs["tokens"], inputs["mask"], inputs["positions"], attention="softmax"
    )
    real = inputs["mask"]
    assert rel_error(ref[real], np.load(folder / "logits.npy")[real]) < 1e-5
    for name, head in (("bert_mlm", "mlm"), ("bert_cls", "classes")):
        folder = hf_checkpoints / name
        inputs = _inputs(folder)
        ref = bert_outputs(
            interop.read_state_dict(folder),
            _config(folder),
            inputs["tokens"],
            inputs["segments"],
            inputs["mask"],
            attention="softmax",
        )[head]
        want = np.load(folder / "logits.npy")
        rows = inputs["mask"] if head == "mlm" else slice(None)
        assert rel_error(ref[rows], want[rows]) < 1e-5, name


def test_gptj_converts_with_transformers_logits(hf_checkpoints):
    folder = hf_checkpoints / "gptj"
    model = interop.load_gptj(folder)
    assert model.config.attention == "softmax" and model.config.rotary_dim == 8 and model.config.ff_dim == 192
    inputs, real = _inputs(folder), _inputs(folder)["mask"]
    assert rel_error(_ours_gpt(model, inputs)[real], np.load(folder / "logits.npy")[real]) < 1e-5


def test_official_cottention_gptj_layout_matches_the_specification(hf_checkpoints):
    folder = hf_checkpoints / "gptj_cosine"
    model = interop.load_gptj(folder)  # cosine, from the norm_const tensors
    state = interop.read_state_dict(folder)
    assert model.config.attention == "cosine"
    np.testing.assert_array_equal(
        model.blocks[1].attn.stabilizer[...], state["transformer.h.1.attn.norm_const"].reshape(-1)
    )
    inputs = _inputs(folder)
    ref = gptj_logits(state, _config(folder), inputs["tokens"], inputs["mask"], inputs["positions"], attention="cosine")
    real = inputs["mask"]
    assert rel_error(_ours_gpt(model, inputs)[real], ref[real]) < 1e-5
    with pytest.raises(ValueError, match="has cosine attention .*norm_const"):
        interop.load_gptj(folder, attention="softmax")


def test_bert_masked_lm_and_classifier_convert_with_transformers_logits(hf_checkpoints):
    mlm_folder, cls_folder = hf_checkpoints / "bert_mlm", hf_checkpoints / "bert_cls"
    with pytest.warns(UserWarning, match="pooler.bias.*pooler.kernel|classifier"):
        mlm = interop.load_bert(mlm_folder)  # no pooler / classifier in it
    assert mlm.config.activation == "gelu" and mlm.config.attention == "softmax"
    inputs, real = _inputs(mlm_folder), _inputs(mlm_folder)["mask"]
    assert rel_error(_ours_bert(mlm, inputs)[0][real], np.load(mlm_folder / "logits.npy")[real]) < 1e-5
    with pytest.warns(UserWarning, match="mlm_bias"):
        classifier = interop.load_bert(cls_folder)
    assert classifier.config.num_labels == 3
    assert rel_error(_ours_bert(classifier, _inputs(cls_folder))[1], np.load(cls_folder / "logits.npy")) < 1e-5


def test_bert_pretraining_converts_with_transformers_logits_under_left_padding(hf_checkpoints):
    """BertForPreTraining loads with its NSP head dropped (one warning), and numbers positions 0..T-1 as
    transformers does: left-padded inputs give transformers' MLM logits at the real tokens."""
    folder = hf_checkpoints / "bert_pretraining"
    assert any(k.startswith("cls.seq_relationship.") for k in interop.read_state_dict(folder))
    with pytest.warns(UserWarning, match="dropped the next-sentence-prediction head cls.seq_relationship"):
        model = interop.load_bert(folder)
    assert model.config.positions == "absolute"
    inputs = _inputs(folder)
    real = inputs["mask"]
    assert not real[:, 0].all()  # left padding in some row
    assert rel_error(_ours_bert(model, inputs)[0][real], np.load(folder / "logits.npy")[real]) < 1e-5


def test_official_cottention_bert_layout_matches_the_specification(hf_checkpoints):
    folder = hf_checkpoints / "bert_cosine"
    with pytest.warns(UserWarning, match="pooler"):
        model = interop.load_bert(folder)
    assert model.config.attention == "cosine"
    inputs = _inputs(folder)
    ref = bert_outputs(
        interop.read_state_dict(folder),
        _config(folder),
        inputs["tokens"],
        inputs["segments"],
        inputs["mask"],
        attention="cosine",
    )["mlm"]
    real = inputs["mask"]
    assert rel_error(_ours_bert(model, inputs)[0][real], ref[real]) < 1e-5


@pytest.mark.parametrize("name", ["gptj", "gptj_cosine", "bert_mlm", "bert_cls", "bert_cosine"])
def test_export_gives_back_the_checkpoint_bit_for_bit(hf_checkpoints, name):
    folder = hf_checkpoints / name
    state = interop.read_state_dict(folder)
    if name.startswith("gptj"):
        exported = interop.gptj_state_dict(interop.load_gptj(folder))
    else:
        architecture = "BertForSequenceClassification" if name == "bert_cls" else "BertForMaskedLM"
        with pytest.warns(UserWarning):
            exported = interop.bert_state_dict(interop.load_bert(folder), architecture)
        if name != "bert_cls":  # the tied decoder, which save_pretrained leaves out of the file
            assert np.array_equal(
                exported.pop("cls.predictions.decoder.weight"), exported["bert.embeddings.word_embeddings.weight"]
            )
            assert np.array_equal(exported.pop("cls.predictions.decoder.bias"), exported["cls.predictions.bias"])
    assert sorted(exported) == sorted(state)
    for key, value in state.items():
        assert exported[key].shape == value.shape and np.array_equal(exported[key], value), key


def test_exported_models_load_in_transformers_with_our_logits(hf_checkpoints, tmp_path):
    gpt = interop.load_gptj(hf_checkpoints / "gptj")
    for layer in gpt.blocks:  # other weights than the checkpoint's: a real export
        layer.attn.query.kernel[...] += 0.05 * jax.random.normal(fresh_key(), layer.attn.query.kernel[...].shape)
    with pytest.warns(UserWarning):
        bert = interop.load_bert(hf_checkpoints / "bert_cls")
    bert.classifier.bias[...] += 0.3
    interop.save_gptj(gpt, tmp_path / "gptj")
    interop.save_bert(bert, tmp_path / "bert", "BertForSequenceClassification")
    gpt_inputs, bert_inputs = hf_checkpoints / "gptj" / "inputs.npz", hf_checkpoints / "bert_cls" / "inputs.npz"
    run_interop("logits", tmp_path / "gptj", gpt_inputs)
    run_interop("logits", tmp_path / "bert", bert_inputs)
    real = _inputs(hf_checkpoints / "gptj")["mask"]
    ours = _ours_gpt(gpt, _inputs(hf_checkpoints / "gptj"))
    assert rel_error(np.load(tmp_path / "gptj" / "logits.npy")[real], ours[real]) < 1e-5
    ours = _ours_bert(bert, _inputs(hf_checkpoints / "bert_cls"))[1]
    assert rel_error(np.load(tmp_path / "bert" / "logits.npy"), ours) < 1e-5


def test_bfloat16_safetensors_and_torch_files(hf_checkpoints):
    fp32 = interop.read_state_dict(hf_checkpoints / "gptj")
    bf16 = interop.read_state_dict(hf_checkpoints / "gptj_bf16.safetensors")
    assert sorted(bf16) == sorted(fp32)
    for key, value in fp32.items():  # torch's rounding to bfloat16 is NumPy's (nearest even)
        assert bf16[key].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(bf16[key], value.astype(ml_dtypes.bfloat16), err_msg=key)
    model = interop.load_gptj(bf16, _config(hf_checkpoints / "gptj"))
    assert model.blocks[0].attn.query.kernel[...].dtype == jnp.float32
    try:
        import torch  # noqa: F401,PLC0415
    except ImportError:
        with pytest.raises(ImportError, match="PyTorch pickle: reading it needs torch"):
            interop.read_state_dict(hf_checkpoints / "gptj_torch.bin")
    else:
        torch_state = interop.read_state_dict(hf_checkpoints / "gptj_torch.bin")
        assert all(np.array_equal(torch_state[k], v) for k, v in fp32.items())


def test_converter_input_errors(hf_checkpoints):
    folder = hf_checkpoints / "gptj"
    state, config = interop.read_state_dict(folder), _config(folder)
    with pytest.raises(ValueError, match=r"has no 'transformer.h.1.mlp.fc_in.bias'"):
        interop.load_gptj({k: v for k, v in state.items() if k != "transformer.h.1.mlp.fc_in.bias"}, config)
    with pytest.raises(ValueError, match=r"1 tensor\(s\) this model has no place for.*'extra.weight'"):
        interop.load_gptj(state | {"extra.weight": np.zeros(3)}, config)
    with pytest.raises(ValueError, match=r"'transformer.wte.weight' has shape \(97, 48\); the model config needs"):
        interop.load_gptj(state, config | {"vocab_size": 90})
    with pytest.raises(ValueError, match="model_type must be 'gptj'"):
        interop.load_gptj(state, config | {"model_type": "llama"})
    with pytest.raises(ValueError, match="config: none given and no config.json"):
        interop.load_gptj(state)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interop.load_gptj(folder / "nope.safetensors")
    bert_state = interop.read_state_dict(hf_checkpoints / "bert_mlm")
    untied = bert_state | {"cls.predictions.decoder.weight": bert_state["bert.embeddings.word_embeddings.weight"] + 1}
    with pytest.raises(ValueError, match="differs from 'bert.embeddings.word_embeddings.weight'"):
        interop.load_bert(untied, _config(hf_checkpoints / "bert_mlm"))
    with pytest.raises(ValueError, match="position_embedding_type must be 'absolute'"):
        interop.load_bert(
            bert_state, _config(hf_checkpoints / "bert_mlm") | {"position_embedding_type": "relative_key"}
        )
