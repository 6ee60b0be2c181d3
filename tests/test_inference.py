"""Using a trained model: `load_model(workdir)` (parameters only), `load_tokenizer`, `cottention-generate`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import cottention_jax
from cottention_jax import cli, decoding, inference
from cottention_jax.checkpoint import Checkpointer
from cottention_jax.configs import to_dict, train_preset
from cottention_jax.data import paths, tokenization
from cottention_jax.models import GPT, Bert
from tests._util import fresh_key

# gpt-tiny with the shipped 4,096-token BPE, so that nothing is trained or built here
_GPT = train_preset("gpt-tiny", ["data.vocab_size=4096", "model.vocab_size=4096"])
_BERT = train_preset("bert-tiny")


def _save_run(workdir: Path, config, steps=(1,), optimizer=optax.sgd(0.1)) -> list:
    """A workdir as training leaves it: one checkpoint per step, each with other random parameters.
    The optimizer is SGD, not the AdamW training builds: load_model must not need its state."""
    kind = GPT if config.kind == "gpt" else Bert
    ckpt = Checkpointer(workdir / "checkpoints", save_every=1, keep=5)
    models = []
    for step in steps:
        model = kind(config.model, rngs=nnx.Rngs(params=int(jax.random.randint(fresh_key(), (), 0, 10**6)),
                                                 dropout=0))
        ckpt.save(step, model, nnx.Optimizer(model, optimizer, wrt=nnx.Param), {"position": step},
                  to_dict(config), force=True)
        models.append(model)
    ckpt.close()
    return models


def _params(model):
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_load_model_restores_the_parameters_of_the_newest_or_a_named_step(tmp_path):
    first, second = _save_run(tmp_path, _GPT, steps=(3, 7))
    loaded = cottention_jax.load_model(tmp_path)
    assert isinstance(loaded, GPT) and loaded.config == _GPT.model
    want, got = _params(second), _params(loaded)
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    tokens = jax.random.randint(fresh_key(), (2, 9), 0, 4096)
    np.testing.assert_array_equal(loaded(tokens), second(tokens))
    older = inference.load_model(tmp_path, step=3)
    assert all(np.array_equal(a, b) for a, b in zip(_params(first).values(), _params(older).values()))
    assert all(d.deterministic for _, d in nnx.iter_graph(loaded) if isinstance(d, nnx.Dropout))   # eval mode
    cast = inference.load_model(tmp_path, param_dtype="bfloat16")
    assert {v.dtype for v in _params(cast).values()} == {np.dtype(jnp.bfloat16)}


def test_load_model_skips_a_damaged_newest_checkpoint(tmp_path):
    first, _ = _save_run(tmp_path, _GPT, steps=(1, 2))
    victim = max((p for p in (tmp_path / "checkpoints" / "2" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    loaded = inference.load_model(tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(_params(first).values(), _params(loaded).values()))


def test_load_model_of_a_bert_run_and_the_run_tokenizer(tmp_path):
    (bert,) = _save_run(tmp_path, _BERT)
    loaded = inference.load_model(tmp_path)
    ids = jax.random.randint(fresh_key(), (2, 8), 0, _BERT.model.vocab_size)
    assert isinstance(loaded, Bert)
    bert.eval()                                                    # the loaded model is; dropout is 0.1
    np.testing.assert_array_equal(loaded.mlm_logits(loaded(ids)), bert.mlm_logits(bert(ids)))
    tokenizer = inference.load_tokenizer(tmp_path)
    assert tokenizer.kind == "wordpiece"
    assert inference.load_run_config(tmp_path) == _BERT


def test_load_tokenizer_prefers_the_runs_own_tokenizer_json(tmp_path, capsys):
    """Training writes <workdir>/tokenizer.json; it, not the config's shipped tokenizer, is the run's."""
    (model,) = _save_run(tmp_path, _GPT)
    assert cottention_jax.load_tokenizer is inference.load_tokenizer
    shipped = tokenization.get_tokenizer("bpe", "shakespeare", 4096)     # no tokenizer.json: the config's
    assert cottention_jax.load_tokenizer(tmp_path).to_json() == shipped.to_json()
    tokenization.ByteTokenizer().save(tmp_path / "tokenizer.json")
    tokenizer = cottention_jax.load_tokenizer(tmp_path)
    assert tokenizer.kind == "byte"
    # cottention-generate encodes and decodes with it.
    (record,) = _generate_json(capsys, "--workdir", tmp_path, "--prompt", "ROMEO:", "--max-new-tokens", 5,
                               "--no-stop", "--json")
    want = decoding.generate(model, jnp.asarray([list(b"ROMEO:")]), max_new_tokens=5)[0].tolist()
    assert record["tokens"] == want and record["completion"] == tokenizer.decode(want)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(paths.CorruptDataError, match=r"tokenizer\.json is not a readable tokenizer"):
        inference.load_tokenizer(tmp_path)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoints/ folder"):
        inference.load_model(tmp_path)
    _save_run(tmp_path, _GPT, steps=(1,))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 5 .* there are \[1\]"):
        inference.load_model(tmp_path, step=5)


def _generate_json(capsys, *argv) -> list[dict]:
    capsys.readouterr()
    cli.generate_main(list(map(str, argv)))
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_generate_command_decodes_like_generate_and_stops_at_eos(tmp_path, capsys):
    (model,) = _save_run(tmp_path, _GPT)
    tokenizer = inference.load_tokenizer(tmp_path)
    prompts = ["ROMEO:", "To be, or not"]
    records = _generate_json(capsys, "--workdir", tmp_path, "--prompt", prompts[0], "--prompt", prompts[1],
                             "--max-new-tokens", 6, "--no-stop", "--json")
    assert [r["prompt"] for r in records] == prompts
    for record, text in zip(records, prompts):                     # each prompt alone, greedy
        want = decoding.generate(model, jnp.asarray([tokenizer.encode(text)]), max_new_tokens=6)[0]
        assert record["tokens"] == want.tolist() and record["completion"] == tokenizer.decode(want.tolist())
    eos = records[0]["tokens"][2]                                  # make the third token the "end"
    stopped = _generate_json(capsys, "--workdir", tmp_path, "--prompt", prompts[0], "--max-new-tokens", 6,
                             "--eos-token-id", eos, "--json")[0]
    assert stopped["tokens"] == records[0]["tokens"][:records[0]["tokens"].index(eos)]
    sampled = _generate_json(capsys, "--workdir", tmp_path, "--prompt", prompts[0], "--max-new-tokens", 6,
                             "--temperature", "0.9", "--top-k", 50, "--top-p", "0.9", "--seed", 3, "--json")
    assert len(sampled[0]["tokens"]) <= 6
    with pytest.raises(SystemExit) as refused:             # one line, no usage text
        cli.generate_main(["--workdir", str(tmp_path), "--prompt", "x", "--top-p", "1.5"])
    assert "top_p must be in (0, 1]" in str(refused.value.code) and "\n" not in str(refused.value.code)


def test_generate_command_refuses_a_bert_run(tmp_path, capsys):
    _save_run(tmp_path, _BERT)
    with pytest.raises(SystemExit):
        cli.generate_main(["--workdir", str(tmp_path), "--prompt", "x"])
    assert "generation needs a GPT" in capsys.readouterr().err


def test_train_command_prints_any_preset_config(capsys):
    cli.train_main(["--preset", "bert-tiny", "--print-config", "--set", "steps=3"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "bert-mlm" and printed["steps"] == 3
    assert dataclasses.asdict(_BERT)["model"] == printed["model"]
