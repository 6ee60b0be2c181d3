"""The converters on state dicts written here by hand, name by name in PyTorch's layouts, without PyTorch
and without our exporters: so a bug that the export-then-import round trip cannot see (one made the same
way in both directions) still shows. Each checkpoint is checked against the float64 NumPy forward of
tests/_reference_transformers.py, which reads the PyTorch names and layouts itself, and parameter by
parameter: Cottention's norm_const is our stabilizer in head order, and a square torch weight lands
transposed. Also: BertForPreTraining loads (its NSP head dropped with a warning), converted BERTs number
positions 0..T-1 as transformers does, non-float weights are refused, and every error names its file.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax import interop
from cottention_jax.models import Bert
from tests._reference_transformers import bert_outputs, gptj_logits
from tests._util import fresh_key, rel_error

GPTJ_HF = dict(
    model_type="gptj",
    vocab_size=37,
    n_positions=24,
    n_embd=16,
    n_layer=2,
    n_head=4,
    n_inner=40,
    rotary_dim=2,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    resid_pdrop=0.0,
)
BERT_HF = dict(
    model_type="bert",
    vocab_size=41,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    max_position_embeddings=24,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0,
)


def _rng() -> np.random.Generator:
    return np.random.default_rng(int(jax.random.randint(fresh_key(), (), 0, 2**31 - 1)))


def _norm_const(rng, heads: int) -> np.ndarray:
    """(1, H, 1, 1) with a distinct value per head (well apart), so a swap of two heads shows."""
    return (rng.permutation(heads) - heads / 2 + 0.3 * rng.random(heads)).reshape(1, heads, 1, 1)


def _gptj_state(rng, cosine: bool) -> dict[str, np.ndarray]:
    """A GPTJForCausalLM state dict: torch Linear weights are (out, in)."""
    c = GPTJ_HF
    d, f, v = c["n_embd"], c["n_inner"], c["vocab_size"]

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def ln():
        return (1 + 0.2 * rng.standard_normal(d)).astype(np.float32), (0.2 * rng.standard_normal(d)).astype(np.float32)

    s = {"transformer.wte.weight": w(v, d)}
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        s[p + "ln_1.weight"], s[p + "ln_1.bias"] = ln()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"attn.{name}.weight"] = w(d, d)
        if cosine:
            s[p + "attn.norm_const"] = _norm_const(rng, c["n_head"]).astype(np.float32)
        s[p + "mlp.fc_in.weight"], s[p + "mlp.fc_in.bias"] = w(f, d), w(f)
        s[p + "mlp.fc_out.weight"], s[p + "mlp.fc_out.bias"] = w(d, f), w(d)
    s["transformer.ln_f.weight"], s["transformer.ln_f.bias"] = ln()
    s["lm_head.weight"], s["lm_head.bias"] = w(v, d), w(v)
    return s


def _bert_state(rng, cosine: bool, *, nsp: bool = False) -> dict[str, np.ndarray]:
    """A BertForPreTraining-like state dict (encoder, pooler, MLM head; `nsp`: the NSP head too)."""
    c = BERT_HF
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def ln():
        return (1 + 0.2 * rng.standard_normal(d)).astype(np.float32), (0.2 * rng.standard_normal(d)).astype(np.float32)

    e = "bert.embeddings."
    s = {
        e + "word_embeddings.weight": w(v, d),
        e + "position_embeddings.weight": w(c["max_position_embeddings"], d),
        e + "token_type_embeddings.weight": w(2, d),
    }
    s[e + "LayerNorm.weight"], s[e + "LayerNorm.bias"] = ln()
    for i in range(c["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            s[p + f"attention.self.{name}.weight"], s[p + f"attention.self.{name}.bias"] = w(d, d), w(d)
        if cosine:
            s[p + "attention.self.norm_const"] = _norm_const(rng, c["num_attention_heads"]).astype(np.float32)
        s[p + "attention.output.dense.weight"], s[p + "attention.output.dense.bias"] = w(d, d), w(d)
        s[p + "attention.output.LayerNorm.weight"], s[p + "attention.output.LayerNorm.bias"] = ln()
        s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"] = w(f, d), w(f)
        s[p + "output.dense.weight"], s[p + "output.dense.bias"] = w(d, f), w(d)
        s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"] = ln()
    s["bert.pooler.dense.weight"], s["bert.pooler.dense.bias"] = w(d, d), w(d)
    t = "cls.predictions.transform."
    s[t + "dense.weight"], s[t + "dense.bias"] = w(d, d), w(d)
    s[t + "LayerNorm.weight"], s[t + "LayerNorm.bias"] = ln()
    s["cls.predictions.bias"] = w(v)
    if nsp:
        s["cls.seq_relationship.weight"], s["cls.seq_relationship.bias"] = w(2, d), w(2)
    return s


def _left_padded(rng, b: int, t: int) -> np.ndarray:
    """(B, T) bool, left padding of random lengths; the first row has one real token, the second all."""
    lengths = rng.integers(1, t + 1, size=b)
    lengths[:2] = 1, t
    return np.arange(t)[None] >= (t - lengths)[:, None]


def _at(path) -> str:
    """A regex for an error message that starts by naming `path`."""
    return "^" + re.escape(str(path)) + ": "


def _save(state: dict, config: dict, directory):
    directory.mkdir(parents=True, exist_ok=True)
    interop.write_safetensors(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("attention", ["softmax", "cosine"])
def test_hand_built_gptj_loads_with_the_reference_logits_left_padded(attention):
    rng = _rng()
    state = _gptj_state(rng, attention == "cosine")
    model = interop.load_gptj(state, GPTJ_HF)
    assert model.config.attention == attention
    tokens = rng.integers(0, GPTJ_HF["vocab_size"], size=(3, 9))
    mask = _left_padded(rng, 3, 9)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # what transformers' generate passes
    ref = gptj_logits(state, GPTJ_HF, tokens, mask, positions, attention=attention)
    ours = np.asarray(model(jnp.asarray(tokens, jnp.int32), padding_mask=jnp.asarray(mask)))
    assert rel_error(ours[mask], ref[mask]) < 1e-5


@pytest.mark.parametrize("attention", ["softmax", "cosine"])
def test_converted_bert_numbers_positions_like_transformers_under_left_padding(attention):
    """transformers' BERT numbers positions 0..T-1 whatever the padding; the NumPy reference does the same,
    so with left padding a converted model must give its logits at the real tokens."""
    rng = _rng()
    state = _bert_state(rng, attention == "cosine")
    with pytest.warns(UserWarning, match="classifier"):
        model = interop.load_bert(state, BERT_HF)
    assert model.config.positions == "absolute" and model.config.attention == attention
    tokens = rng.integers(0, BERT_HF["vocab_size"], size=(4, 11))
    segments = rng.integers(0, 2, size=(4, 11))
    mask = _left_padded(rng, 4, 11)
    ref = bert_outputs(state, BERT_HF, tokens, segments, mask, attention=attention)["mlm"]
    hidden = model(
        jnp.asarray(tokens, jnp.int32), segment_ids=jnp.asarray(segments, jnp.int32), padding_mask=jnp.asarray(mask)
    )
    assert rel_error(np.asarray(model.mlm_logits(hidden))[mask], ref[mask]) < 1e-5


def test_our_own_bert_keeps_its_position_convention_through_export(tmp_path):
    """A Bert of ours counts positions over the real tokens: its export says so in config.json and loads
    back with positions="from_mask" (saving warns that transformers would number them 0..T-1)."""
    rng = _rng()
    with pytest.warns(UserWarning, match="classifier"):
        converted = interop.load_bert(_bert_state(rng, False), BERT_HF)
    ours = Bert(dataclasses.replace(converted.config, positions="from_mask"), rngs=nnx.Rngs(0))
    with pytest.warns(UserWarning, match="positions='from_mask'.*left-padded"):
        interop.save_bert(ours, tmp_path, "BertModel")
    with pytest.warns(UserWarning, match="classifier"):
        back = interop.load_bert(tmp_path)
    assert back.config.positions == "from_mask"
    config = json.loads((tmp_path / "config.json").read_text())
    del config["cottention_jax"]["positions"]  # written before the field existed: our models
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="classifier"):
        assert interop.load_bert(tmp_path).config.positions == "from_mask"
    with pytest.raises(ValueError, match="positions must be one of .*'from_mask', 'absolute'.*got 'left'"):
        interop.load_bert(tmp_path, positions="left")


@pytest.mark.parametrize("kind", ["gptj", "bert"])
def test_norm_const_is_the_stabilizer_in_head_order(kind):
    rng = _rng()
    if kind == "gptj":
        state = _gptj_state(rng, cosine=True)
        model = interop.load_gptj(state, GPTJ_HF)
        layers = [(b.attn, f"transformer.h.{i}.attn.norm_const") for i, b in enumerate(model.blocks)]
    else:
        state = _bert_state(rng, cosine=True)
        with pytest.warns(UserWarning, match="classifier"):
            model = interop.load_bert(state, BERT_HF)
        layers = [
            (layer.attn, f"bert.encoder.layer.{i}.attention.self.norm_const") for i, layer in enumerate(model.layers)
        ]
    for attn, name in layers:
        heads = state[name].shape[1]
        assert len(set(state[name].ravel().tolist())) == heads  # distinct per head: a swap shows
        for h in range(heads):
            assert float(attn.stabilizer[...][h]) == float(state[name][0, h, 0, 0]), (name, h)


def test_square_torch_weights_land_transposed():
    """torch Linear weights are (out, in); ours (in, out). Square ones (q/k/v/out projections, the pooler,
    the MLM dense) would load untransposed without an error: check each element, and each head's slice."""
    rng = _rng()
    gptj = _gptj_state(rng, cosine=False)
    model = interop.load_gptj(gptj, GPTJ_HF)
    heads, d = GPTJ_HF["n_head"], GPTJ_HF["n_embd"]
    size = d // heads
    for i, block in enumerate(model.blocks):
        for name, ours in (("q_proj", block.attn.query), ("k_proj", block.attn.key), ("v_proj", block.attn.value)):
            w = gptj[f"transformer.h.{i}.attn.{name}.weight"]  # (H*D out, in)
            assert not np.allclose(w, w.T)
            kernel = np.asarray(ours.kernel[...])  # (in, H, D)
            for h in range(heads):  # head h reads rows h*D..(h+1)*D of torch's weight
                np.testing.assert_array_equal(kernel[:, h, :], w[h * size : (h + 1) * size].T, err_msg=name)
        w = gptj[f"transformer.h.{i}.attn.out_proj.weight"]  # (out, H*D in)
        kernel = np.asarray(block.attn.out.kernel[...])  # (H, D, out)
        for h in range(heads):
            np.testing.assert_array_equal(kernel[h], w[:, h * size : (h + 1) * size].T)
    bert_state = _bert_state(rng, cosine=False)
    with pytest.warns(UserWarning, match="classifier"):
        bert = interop.load_bert(bert_state, BERT_HF)
    for name, ours in (
        ("bert.pooler.dense.weight", bert.pooler.kernel),
        ("cls.predictions.transform.dense.weight", bert.mlm_dense.kernel),
        ("bert.encoder.layer.1.attention.self.query.weight", bert.layers[1].attn.query.kernel),
    ):
        w = bert_state[name]
        assert w.shape[0] == w.shape[1] and not np.allclose(w, w.T)
        np.testing.assert_array_equal(np.asarray(ours[...]).reshape(w.shape), w.T, err_msg=name)


def test_bert_pretraining_checkpoint_loads_without_its_nsp_head(tmp_path):
    """BertForPreTraining (the official Cottention BERT's class): the MLM head and pooler load; the NSP head
    cls.seq_relationship.* has no place in Bert and is dropped with one warning that names the file."""
    rng = _rng()
    state = _bert_state(rng, cosine=True, nsp=True)
    folder = _save(state, BERT_HF | {"architectures": ["BertForPreTraining"]}, tmp_path / "pretraining")
    with pytest.warns(UserWarning) as caught:
        model = interop.load_bert(folder)
    messages = [str(w.message) for w in caught]
    nsp = [m for m in messages if "seq_relationship" in m]
    assert len(nsp) == 1 and "\n" not in nsp[0], messages
    assert nsp[0].startswith(str(folder / "model.safetensors")) and "cls.seq_relationship.* (bias, weight)" in nsp[0]
    fresh = [m for m in messages if "keep their initial values" in m]
    assert len(fresh) == 1 and "classifier.kernel" in fresh[0] and "pooler" not in fresh[0]  # the pooler loaded
    np.testing.assert_array_equal(np.asarray(model.pooler.kernel[...]), state["bert.pooler.dense.weight"].T)
    tokens = rng.integers(0, BERT_HF["vocab_size"], size=(2, 7))
    segments = rng.integers(0, 2, size=(2, 7))
    ref = bert_outputs(state, BERT_HF, tokens, segments, np.ones((2, 7), bool), attention="cosine")["mlm"]
    hidden = model(jnp.asarray(tokens, jnp.int32), segment_ids=jnp.asarray(segments, jnp.int32))
    assert rel_error(model.mlm_logits(hidden), ref) < 1e-5


@pytest.mark.parametrize("dtype", ["int32", "bool", "complex64"])
def test_weights_that_are_not_floating_point_are_refused(dtype, tmp_path):
    rng = _rng()
    state = _gptj_state(rng, cosine=False)
    name = "transformer.h.1.mlp.fc_in.weight"
    state[name] = (state[name] * 4).astype(dtype)
    if dtype == "complex64":  # safetensors has no complex dtype: a state dict
        source, where = state, "state dict"
    else:
        source = _save(state, GPTJ_HF, tmp_path / dtype)
        where = str(source / "model.safetensors")
    with pytest.raises(ValueError, match=_at(where) + rf"tensor '{name}' has dtype {dtype}; a weight must be floating"):
        interop.load_gptj(source, GPTJ_HF)


def test_errors_name_the_file(tmp_path):
    rng = _rng()
    state = _bert_state(rng, cosine=False)
    folder = _save(state, BERT_HF, tmp_path / "bert")
    weights, config = folder / "model.safetensors", folder / "config.json"
    missing = _save({k: v for k, v in state.items() if "layer.1.output.dense" not in k}, BERT_HF, tmp_path / "missing")
    with pytest.raises(ValueError, match=_at(missing / "model.safetensors") + r"the state dict has no 'bert.encoder"):
        interop.load_bert(missing)
    extra = _save(state | {"extra.weight": np.zeros(3, np.float32)}, BERT_HF, tmp_path / "extra")
    with pytest.raises(ValueError, match=_at(extra / "model.safetensors") + r"the state dict holds 1 tensor"):
        interop.load_bert(extra)
    with pytest.raises(ValueError, match=_at(weights) + r"'bert.embeddings.word_embeddings.weight' has shape"):
        interop.load_bert(folder, vocab_size=40)
    untied = _save(
        state | {"cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"] + 1},
        BERT_HF,
        tmp_path / "untied",
    )
    with pytest.raises(ValueError, match=_at(untied / "model.safetensors") + r"'cls.predictions.decoder.weight' "):
        interop.load_bert(untied)
    config.write_text(json.dumps(BERT_HF | {"hidden_act": "quick_gelu"}))
    with pytest.raises(ValueError, match=_at(config) + r"hidden_act 'quick_gelu' has no counterpart"):
        interop.load_bert(folder)
    config.write_text("{not json")
    with pytest.raises(ValueError, match=_at(config) + r"not valid JSON"):
        interop.load_bert(folder)
    config.write_text("[1, 2]")
    with pytest.raises(ValueError, match=_at(config) + r"must hold a JSON object"):
        interop.load_bert(folder)
    config.unlink()
    with pytest.raises(ValueError, match=re.escape(f"no {config} beside the weights ({weights})")):
        interop.load_bert(folder)
    weights.write_bytes(weights.read_bytes()[:100])  # a cut file
    with pytest.raises(ValueError, match=_at(weights) + r"not a readable safetensors file"):
        interop.read_state_dict(folder)
    cosine = _save(_gptj_state(rng, cosine=True), GPTJ_HF, tmp_path / "gptj")
    with pytest.raises(ValueError, match=_at(cosine / "model.safetensors") + r"attention='softmax', but"):
        interop.load_gptj(cosine, attention="softmax")


def test_save_gptj_writes_pytorch_model_bin_when_torch_is_installed(tmp_path, monkeypatch):
    """A cosine model: with torch, pytorch_model.bin (read by the official loaders) holds the same tensors as
    model.safetensors (torch.save of torch tensors; a stand-in module records the call here, where torch is
    not installed); without torch, the warning says that only model.safetensors was written."""
    model = interop.load_gptj(_gptj_state(_rng(), cosine=True), GPTJ_HF)
    saved = {}
    fake = types.ModuleType("torch")
    fake.from_numpy = lambda a: ("tensor", a)
    fake.save = lambda obj, path: saved.update(obj=obj, path=path)
    monkeypatch.setitem(sys.modules, "torch", fake)
    with pytest.warns(UserWarning, match="model.safetensors and pytorch_model.bin were written"):
        interop.save_gptj(model, tmp_path / "with")
    assert saved["path"] == tmp_path / "with" / "pytorch_model.bin"
    written = interop.read_state_dict(tmp_path / "with" / "model.safetensors")
    assert sorted(saved["obj"]) == sorted(written) and any(k.endswith("norm_const") for k in written)
    for key, value in saved["obj"].items():
        assert value[0] == "tensor" and value[1].flags.c_contiguous and np.array_equal(value[1], written[key]), key
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.warns(
        UserWarning,
        match="torch is not installed, so only model.safetensors was written, not the "
        "pytorch_model.bin the official loaders read",
    ):
        interop.save_gptj(model, tmp_path / "without")
    assert sorted(p.name for p in (tmp_path / "without").iterdir()) == ["config.json", "model.safetensors"]
