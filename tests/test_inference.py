"""Using a trained model: `load_model(workdir)` (parameters only), `load_tokenizer`, `cottention-generate`."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import cottention_jax
from cottention_jax import cli, decoding, inference
from cottention_jax.checkpoint import Checkpointer, CheckpointError
from cottention_jax.configs import to_dict, train_preset
from cottention_jax.data import paths, tokenization
from cottention_jax.models import GPT, Bert
from tests._util import REPO_ROOT, fresh_key, rel_error

# gpt-tiny with the shipped 4,096-token BPE, so that nothing is trained or built here
_GPT = train_preset("gpt-tiny", ["data.vocab_size=4096", "model.vocab_size=4096"])
_BERT = train_preset("bert-tiny")


def _save_run(workdir: Path, config, steps=(1,), optimizer=None) -> list:
    """A workdir as training leaves it: one checkpoint per step, each with other random parameters.
    The optimizer is SGD, not the AdamW training builds: load_model must not need its state."""
    kind = GPT if config.kind == "gpt" else Bert
    optimizer = optax.sgd(0.1) if optimizer is None else optimizer
    ckpt = Checkpointer(workdir / "checkpoints", save_every=1, keep=5)
    models = []
    for step in steps:
        model = kind(config.model, rngs=nnx.Rngs(params=int(jax.random.randint(fresh_key(), (), 0, 10**6)), dropout=0))
        ckpt.save(
            step, model, nnx.Optimizer(model, optimizer, wrt=nnx.Param), {"position": step}, to_dict(config), force=True
        )
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
    assert all(np.array_equal(a, b) for a, b in zip(_params(first).values(), _params(older).values(), strict=True))
    assert all(d.deterministic for _, d in nnx.iter_graph(loaded) if isinstance(d, nnx.Dropout))  # eval mode
    cast = inference.load_model(tmp_path, param_dtype="bfloat16")
    assert {v.dtype for v in _params(cast).values()} == {np.dtype(jnp.bfloat16)}


def _largest_state_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _same_params(a, b) -> bool:
    a, b = _params(a), _params(b)
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_load_model_skips_a_damaged_newest_checkpoint_with_a_one_line_warning(tmp_path, capfd):
    first, second = _save_run(tmp_path, _GPT, steps=(1, 2))
    victim = _largest_state_file(tmp_path / "checkpoints" / "2")
    data = bytearray(victim.read_bytes())
    data[int(jax.random.randint(fresh_key(), (), 0, len(data)))] ^= 0xFF
    victim.write_bytes(bytes(data))
    capfd.readouterr()
    loaded = inference.load_model(tmp_path)
    assert _same_params(loaded, first) and not _same_params(loaded, second)
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "checkpoint 2" in err[0] and "using step 1" in err[0] and victim.name in err[0]
    assert (tmp_path / "checkpoints" / "2").is_dir()  # reading a run moves nothing
    assert inference.load_run_config(tmp_path) == _GPT  # the same warning is not repeated
    assert capfd.readouterr().err == ""


def test_load_model_falls_back_from_an_unreadable_checkpoint_without_checksums(tmp_path, capfd, monkeypatch):
    """Killed between the save and its SHA256SUMS: nothing to verify, Orbax's own read fails. Neither the
    read's traceback nor the ones Orbax's abandoned reads leave (unraisable exceptions, as they finish or
    are garbage-collected) may show: only the one warning, with the file and the error that TensorStore gave."""
    first, _ = _save_run(tmp_path, _GPT, steps=(4, 9))
    (tmp_path / "checkpoints" / "9" / "SHA256SUMS").unlink()
    victim = _largest_state_file(tmp_path / "checkpoints" / "9")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    capfd.readouterr()
    loaded = inference.load_model(tmp_path)
    assert _same_params(loaded, first)
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "checkpoint 9" in err[0] and "using step 4" in err[0] and "no SHA256SUMS" in err[0]
    assert "OUT_OF_RANGE" in err[0] and "TensorStore({" not in err[0]
    for _ in range(6):  # the abandoned reads differ from call to call
        assert _same_params(inference.load_model(tmp_path), first)
        with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step 9: unreadable"):
            inference.load_model(tmp_path, step=9)
    gc.collect()
    assert unraisable == []
    again = capfd.readouterr().err.splitlines()  # a warning per load (the line names the read)
    assert again and all(line.startswith("warning: checkpoint 9 in ") and "using step 4" in line for line in again)


_GENERATE = "import sys; from cottention_jax import cli; cli.generate_main(sys.argv[1:])"


def test_generate_command_falls_back_with_one_warning_and_nothing_else(tmp_path):
    """`cottention-generate` on such a run: the completion of the older step, and on stderr the one warning
    (not a TensorStore traceback, nor the same warning for each of the config, tokenizer and model reads)."""
    first, _ = _save_run(tmp_path, _GPT, steps=(2, 3))
    (tmp_path / "checkpoints" / "3" / "SHA256SUMS").unlink()
    _largest_state_file(tmp_path / "checkpoints" / "3").write_bytes(b"")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _GENERATE,
            "--workdir",
            str(tmp_path),
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "4",
            "--no-stop",
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "checkpoint 3" in lines[0] and "using step 2" in lines[0], lines[:40]
    tokenizer = inference.load_tokenizer(tmp_path)
    want = decoding.generate(first, jnp.asarray([tokenizer.encode("ROMEO:")]), max_new_tokens=4)[0].tolist()
    assert json.loads(run.stdout)["tokens"] == want


_ARCHITECTURE_OVERRIDES = {
    "num_layers": 3,
    "d_model": 128,
    "vocab_size": 5000,
    "num_heads": 8,
    "ff_dim": 128,
    "rotary_dim": 0,
    "attention": "softmax",
    "activation": "relu",
}


def test_load_model_refuses_an_override_that_changes_the_trained_model(tmp_path, capfd):
    _save_run(tmp_path, _GPT)
    for field, value in _ARCHITECTURE_OVERRIDES.items():
        assert getattr(_GPT.model, field) != value
        capfd.readouterr()
        with pytest.raises(ValueError) as refused:
            inference.load_model(tmp_path, **{field: value})
        message = str(refused.value)
        assert f"{field}={value!r}" in message and f"{field}={getattr(_GPT.model, field)!r}" in message
        assert "\n" not in message
        out, err = capfd.readouterr()
        assert out == "" and err == "", (field, err[:3000])  # nothing but the error: no Orbax noise


def test_load_model_overrides_of_how_the_model_runs(tmp_path, capfd):
    (model,) = _save_run(tmp_path, _GPT)
    tokens = jax.random.randint(fresh_key(), (2, 9), 0, _GPT.model.vocab_size)
    want = model(tokens)
    same = inference.load_model(
        tmp_path, num_layers=_GPT.model.num_layers, implementation="xla", max_len=64, remat="block"
    )  # a saved value "overridden" by itself is no change
    assert same.config.max_len == 64 and same.config.implementation == "xla"
    np.testing.assert_allclose(same(tokens), want, rtol=1e-5, atol=1e-5)
    half = inference.load_model(tmp_path, dtype="bfloat16")
    assert rel_error(half(tokens), want) < 3e-2
    with pytest.raises(ValueError, match=r"'num_layer' is not a field of GPTConfig.*implementation"):
        inference.load_model(tmp_path, num_layer=3)
    assert capfd.readouterr().err == ""


def test_load_model_refuses_a_runtime_override_that_resizes_a_parameter(tmp_path):
    """max_len is how long a GPT may run (no parameter depends on it), but the size of Bert's position table."""
    _save_run(tmp_path, _BERT)
    saved, d = _BERT.model.max_len, _BERT.model.d_model
    with pytest.raises(ValueError) as refused:
        inference.load_model(tmp_path, max_len=2 * saved)
    assert (
        f"max_len={2 * saved} changes the shape of the trained parameter position_embed/embedding from "
        f"{(saved, d)} to {(2 * saved, d)} (the checkpoint has max_len={saved})"
    ) in str(refused.value)
    _save_run(tmp_path / "gpt", _GPT)
    longer = 2 * _GPT.model.max_len
    assert inference.load_model(tmp_path / "gpt", max_len=longer).config.max_len == longer


def test_load_model_of_a_bert_run_and_the_run_tokenizer(tmp_path):
    (bert,) = _save_run(tmp_path, _BERT)
    loaded = inference.load_model(tmp_path)
    ids = jax.random.randint(fresh_key(), (2, 8), 0, _BERT.model.vocab_size)
    assert isinstance(loaded, Bert)
    bert.eval()  # the loaded model is; dropout is 0.1
    np.testing.assert_array_equal(loaded.mlm_logits(loaded(ids)), bert.mlm_logits(bert(ids)))
    tokenizer = inference.load_tokenizer(tmp_path)
    assert tokenizer.kind == "wordpiece"
    assert inference.load_run_config(tmp_path) == _BERT


def test_load_tokenizer_prefers_the_runs_own_tokenizer_json(tmp_path, capsys):
    """Training writes <workdir>/tokenizer.json; it, not the config's shipped tokenizer, is the run's."""
    (model,) = _save_run(tmp_path, _GPT)
    assert cottention_jax.load_tokenizer is inference.load_tokenizer
    shipped = tokenization.get_tokenizer("bpe", "shakespeare", 4096)  # no tokenizer.json: the config's
    assert cottention_jax.load_tokenizer(tmp_path).to_json() == shipped.to_json()
    tokenization.ByteTokenizer().save(tmp_path / "tokenizer.json")
    tokenizer = cottention_jax.load_tokenizer(tmp_path)
    assert tokenizer.kind == "byte"
    # cottention-generate encodes and decodes with it.
    (record,) = _generate_json(
        capsys, "--workdir", tmp_path, "--prompt", "ROMEO:", "--max-new-tokens", 5, "--no-stop", "--json"
    )
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


def test_a_changed_run_tokenizer_is_refused_in_one_line(tmp_path):
    """save_run_tokenizer stores the tokenizer's fingerprint; a tokenizer.json changed after training (here
    replaced by another one, as retraining a tokenizer into the workdir would) must not decode silently."""
    (model,) = _save_run(tmp_path, _GPT)
    shipped = tokenization.get_tokenizer("bpe", "shakespeare", 4096)
    path = tokenization.save_run_tokenizer(shipped, tmp_path)
    assert path == tmp_path / "tokenizer.json"
    assert inference.load_tokenizer(tmp_path).to_json() == shipped.to_json()
    recorded = (tmp_path / "tokenizer.json.sha256").read_text().split()
    assert recorded == [hashlib.sha256(path.read_bytes()).hexdigest(), "tokenizer.json"]  # sha256sum -c format

    other = tokenization.get_tokenizer("bpe", "shakespeare", 512)
    other.save(path)  # the file alone changes
    with pytest.raises(paths.CorruptDataError) as refused:
        inference.load_tokenizer(tmp_path)
    message = str(refused.value)
    assert str(path) in message and "changed" in message and "\n" not in message
    with pytest.raises(paths.CorruptDataError, match="changed"):
        tokenization.load_tokenizer(path)  # the file read directly is checked too
    raw = bytearray(shipped.to_json().encode())  # one byte of the original, altered
    raw[int(jax.random.randint(fresh_key(), (), 0, len(raw)))] ^= 0x20
    path.write_bytes(bytes(raw))
    with pytest.raises(paths.CorruptDataError, match="changed"):
        inference.load_tokenizer(tmp_path)

    (tmp_path / "tokenizer.json.sha256").unlink()  # a workdir from before fingerprints
    other.save(path)
    assert inference.load_tokenizer(tmp_path).vocab_size == 512
    tokenization.save_run_tokenizer(tokenization.ByteTokenizer(), tmp_path)  # a new run in the workdir
    assert inference.load_tokenizer(tmp_path).kind == "byte"


def _generate_json(capsys, *argv) -> list[dict]:
    capsys.readouterr()
    cli.generate_main(list(map(str, argv)))
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_generate_command_decodes_like_generate_and_stops_at_eos(tmp_path, capsys):
    (model,) = _save_run(tmp_path, _GPT)
    tokenizer = inference.load_tokenizer(tmp_path)
    prompts = ["ROMEO:", "To be, or not"]
    records = _generate_json(
        capsys,
        "--workdir",
        tmp_path,
        "--prompt",
        prompts[0],
        "--prompt",
        prompts[1],
        "--max-new-tokens",
        6,
        "--no-stop",
        "--json",
    )
    assert [r["prompt"] for r in records] == prompts
    for record, text in zip(records, prompts, strict=True):  # each prompt alone, greedy
        want = decoding.generate(model, jnp.asarray([tokenizer.encode(text)]), max_new_tokens=6)[0]
        assert record["tokens"] == want.tolist() and record["completion"] == tokenizer.decode(want.tolist())
    eos = records[0]["tokens"][2]  # make the third token the "end"
    stopped = _generate_json(
        capsys, "--workdir", tmp_path, "--prompt", prompts[0], "--max-new-tokens", 6, "--eos-token-id", eos, "--json"
    )[0]
    assert stopped["tokens"] == records[0]["tokens"][: records[0]["tokens"].index(eos)]
    sampled = _generate_json(
        capsys,
        "--workdir",
        tmp_path,
        "--prompt",
        prompts[0],
        "--max-new-tokens",
        6,
        "--temperature",
        "0.9",
        "--top-k",
        50,
        "--top-p",
        "0.9",
        "--seed",
        3,
        "--json",
    )
    assert len(sampled[0]["tokens"]) <= 6
    with pytest.raises(SystemExit) as refused:  # one line, no usage text
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
