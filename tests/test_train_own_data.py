"""Training on a user's own data through the commands: every source kind, the run's own tokenizer in
cottention-generate, TFDS datasets under mock_data, GLUE finetuning, and one-line refusals that write nothing."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import cottention_jax
from cottention_jax import cli
from cottention_jax.data.prepare import open_prepared
from tests.data._fixtures import random_prose

_FAST = ["steps=2", "eval_every=2", "eval_batches=1", "checkpoint_every=2", "sample_tokens=0", "log_every=1"]


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Inputs seeded by the test's own id: a failure reproduces alone."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Prepared data and TFDS lookups stay in this test's folder."""
    monkeypatch.setenv("COTTENTION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))


def _train(*argv) -> dict:
    args = ["--preset", "gpt-tiny", "--no-progress"]
    for item in argv:
        args += ["--set", item] if "=" in item and not item.startswith("--") else [item]
    return cli.train_cli(args, description="", default_preset="gpt-tiny", kinds=("gpt", "bert-mlm"), finetune=True)


def _prepared(tmp_path):
    """The one text corpus prepared in this test's data dir."""
    (folder,) = [p for p in (tmp_path / "data" / "prepared").glob("text-*") if p.is_dir()]
    return open_prepared(folder)


def _documents(rng, n=12):
    return [random_prose(rng, int(rng.integers(20, 40))) for _ in range(n)]


def _write_source(kind: str, root: Path, docs: list[str]) -> str:
    """The documents in the file layout of `kind`; returns the data.corpus value naming them."""
    root.mkdir(parents=True)
    if kind == "txt-file":
        (root / "all.txt").write_text("".join(docs))
        return str(root / "all.txt")
    if kind in ("txt-dir", "glob"):
        for i, doc in enumerate(docs):
            (root / ("sub" if i % 2 else ".") / f"d{i}.md").parent.mkdir(exist_ok=True)
            (root / ("sub" if i % 2 else ".") / f"d{i}.md").write_text(doc)
        (root / "notes.bin").write_bytes(b"\0\1")  # not a text suffix: skipped
        return str(root) if kind == "txt-dir" else str(root / "**" / "*.md")
    lines = "".join(json.dumps({"text": doc, "id": i}) + "\n" for i, doc in enumerate(docs))
    if kind == "jsonl":
        (root / "c.jsonl").write_text(lines)
        return str(root / "c.jsonl")
    if kind == "jsonl.gz":
        (root / "c.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
        return str(root / "c.jsonl.gz")
    pa = pytest.importorskip("pyarrow", reason="parquet needs pyarrow (the [parquet] extra)")
    import pyarrow.parquet as pq  # noqa: PLC0415

    pq.write_table(pa.table({"text": docs}), root / "c.parquet")
    return str(root / "c.parquet")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["txt-file", "txt-dir", "glob", "jsonl", "jsonl.gz", "parquet"])
def test_each_source_kind_trains_through_the_command(kind, tmp_path, rng):
    docs = _documents(rng)
    corpus = _write_source(kind, tmp_path / "src", docs)
    summary = _train(f"data.corpus={corpus}", "data.vocab_size=300", *_FAST, "--workdir", str(tmp_path / "run"))
    assert np.isfinite(summary["final_eval"]["loss"]) and summary["vocab_size"] == 300
    prepared = _prepared(tmp_path)
    assert prepared.meta["corpus"] == corpus
    text_bytes = sum(len(d.encode()) for d in docs)
    assert prepared.meta["text_bytes"] == text_bytes  # every document read once, nothing else
    assert (tmp_path / "run" / "tokenizer.json").read_text() == (prepared.folder / "tokenizer.json").read_text()


def test_generate_decodes_with_the_runs_own_tokenizer(tmp_path, rng, capsys):
    corpus = _write_source("jsonl", tmp_path / "src", _documents(rng, 16))
    run = tmp_path / "run"
    _train(
        f"data.corpus={corpus}",
        "data.vocab_size=300",
        "steps=3",
        "eval_every=3",
        "eval_batches=1",
        "checkpoint_every=3",
        "sample_tokens=0",
        "--workdir",
        str(run),
    )
    tokenizer = cottention_jax.load_tokenizer(run)
    shipped = cottention_jax.data.get_tokenizer("bpe", "shakespeare", 512)
    assert tokenizer.vocab_size == 300 and tokenizer.to_json() != shipped.to_json()
    prompt = "The quiet river"
    capsys.readouterr()
    cli.generate_main(["--workdir", str(run), "--prompt", prompt, "--max-new-tokens", "6", "--no-stop", "--json"])
    record = json.loads(capsys.readouterr().out)
    model = cottention_jax.load_model(run)
    ids = tokenizer.encode(prompt)
    # greedy, checked with one parallel (causal) forward over prompt + completion: each generated token is
    # the argmax of the logits at the position before it
    logits = model(jnp.asarray([ids + record["tokens"]]))[0]
    assert len(record["tokens"]) == 6
    assert record["tokens"] == [int(t) for t in jnp.argmax(logits[len(ids) - 1 : -1], axis=-1)]
    assert record["completion"] == tokenizer.decode(record["tokens"])
    # The run keeps its tokenizer's fingerprint: a tokenizer.json replaced afterwards is refused, not used.
    shipped.save(run / "tokenizer.json")
    with pytest.raises(cottention_jax.data.CorruptDataError, match="changed"):
        cottention_jax.load_tokenizer(run)


def test_a_tfds_text_dataset_trains_without_downloading(tmp_path):
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = _train(
            "data.corpus=tfds:lm1b",
            "data.tokenizer=byte",
            "model.vocab_size=263",
            *_FAST,
            "--workdir",
            str(tmp_path / "run"),
        )
    assert np.isfinite(summary["final_eval"]["loss"])
    prepared = _prepared(tmp_path)
    assert prepared.meta["corpus"] == "tfds:lm1b" and set(prepared.splits) == {"train", "validation"}


@pytest.mark.slow
def test_glue_finetuning_reports_each_tasks_metric(tmp_path, capsys):
    """Regression (STS-B: Pearson/Spearman) and pair classification (MRPC: F1/accuracy) from scratch, and
    the GLUE table of two tasks from one pretraining workdir."""
    from cottention_jax.glue import run_glue  # noqa: PLC0415

    pretrain = tmp_path / "bert"
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        cli.train_cli(
            [
                "--preset",
                "bert-tiny",
                "--no-progress",
                "--workdir",
                str(pretrain),
                *sum((["--set", o] for o in _FAST), []),
            ],
            description="",
            default_preset="bert-tiny",
            kinds=("bert-mlm",),
            finetune=True,
        )
        results = run_glue(
            pretrain,
            tasks=["mrpc", "stsb"],
            workdir_root=tmp_path / "glue",
            overrides=["steps=2", "eval_every=2", "checkpoint_every=2"],
            progress=False,
            log=lambda line: None,
        )
    assert set(results["mrpc"]) == {"f1", "accuracy"} and set(results["stsb"]) == {"pearson", "spearman"}
    assert all(-1.0 <= v <= 1.0 for scores in results.values() for v in scores.values())
    saved = json.loads((tmp_path / "glue" / "stsb" / "summary.json").read_text())
    assert saved["final_eval"]["pearson"] == pytest.approx(results["stsb"]["pearson"])


def _refusal(tmp_path, *overrides) -> str:
    """The one-line message of a refused run, after checking that no workdir was created."""
    workdir = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        _train(*overrides, *_FAST, "--workdir", str(workdir))
    message = str(exc.value.code)
    assert "\n" not in message and not workdir.exists(), message
    prepared = tmp_path / "data" / "prepared"
    assert not [p for p in prepared.glob("text-*") if p.is_dir()] if prepared.exists() else True
    return message


def test_bad_data_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "a"}\n')
    (tmp_path / "binary.txt").write_bytes(b"GIF89a\0\0\1\2")
    (tmp_path / "tok.json").write_text('{"model": 3}')
    assert "does not exist" in _refusal(tmp_path, f"data.corpus={tmp_path / 'missing.txt'}")
    assert "empty.txt is empty" in _refusal(tmp_path, f"data.corpus={tmp_path / 'empty.txt'}")
    assert "bad.jsonl line 2 is not JSON" in _refusal(tmp_path, f"data.corpus={tmp_path / 'bad.jsonl'}")
    assert "no field 'text'" in _refusal(tmp_path, f"data.corpus={tmp_path / 'nofield.jsonl'}")
    assert "binary.txt is not a text file" in _refusal(tmp_path, f"data.corpus={tmp_path / 'binary.txt'}")
    assert "tok.json is not a readable tokenizer" in _refusal(tmp_path, f"data.tokenizer={tmp_path / 'tok.json'}")
    assert "data.corpus must be" in _refusal(tmp_path, "data.corpus=nowhere")
    assert "data.tokenizer must be" in _refusal(tmp_path, "data.tokenizer=sentencepiece")
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        assert "no feature 'body'" in _refusal(tmp_path, "data.corpus=tfds:lm1b", "data.text_field=body")
    assert "not prepared" in _refusal(tmp_path, "data.corpus=tfds:lm1b")


def test_the_command_prints_no_traceback(tmp_path):
    env = {"COTTENTION_DATA_DIR": str(tmp_path / "data"), "PATH": str(Path(sys.executable).parent)}
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "cottention-train"),
            "--preset",
            "gpt-tiny",
            "--set",
            f"data.corpus={tmp_path / 'missing.jsonl'}",
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "missing.jsonl does not exist" in run.stderr
    assert not (tmp_path / "w").exists()
