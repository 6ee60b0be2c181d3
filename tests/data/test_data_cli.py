"""`cottention-data prepare / info`: JSON summaries that agree with the prepared folder, and a user's
mistake ending in one line and exit status 1, with nothing prepared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cottention_jax import data_cli
from cottention_jax.data import prepare
from cottention_jax.data.documents import open_source
from cottention_jax.data.pipeline import TokenStream
from tests.data._fixtures import expected_streams, fresh_rng, write_text_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    monkeypatch.setenv("COTTENTION_DATA_DIR", str(folder))
    return folder


def _run(capsys, *argv) -> dict:
    data_cli.main(list(argv))
    return json.loads(capsys.readouterr().out)


def _fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as caught:
        data_cli.main(list(argv))
    message = caught.value.code
    assert isinstance(message, str) and message.startswith("cottention-data: ") and "\n" not in message, message
    assert capsys.readouterr().out == ""
    return message


def _prepared_entries(data_dir) -> list[str]:
    root = Path(data_dir) / "prepared"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def test_prepare_then_info(tmp_path, data_dir, capsys):
    root = tmp_path / "notes"
    write_text_files(root, fresh_rng(), [f"{i}.md" for i in range(6)])
    message = _fails(capsys, "info", str(root), "--tokenizer", "byte")  # not prepared yet
    assert f"cottention-data prepare {root}" in message and "MissingDataError" in message
    summary = _run(capsys, "prepare", str(root), "--tokenizer", "byte", "--no-progress")
    folder = Path(summary["folder"])
    assert folder.parent == data_dir / "prepared" and folder.name == f"text-{summary['fingerprint'][:16]}"
    assert summary["tokenizer"] == {"kind": "byte", "vocab_size": 263} and summary["corpus"] == str(root)
    assert summary["validation_fraction"] == 0.1 and summary["text_field"] == "text"
    expected, documents = expected_streams(open_source(str(root)).pieces(), lambda t: list(t.encode()), 258)
    prepared = prepare.open_prepared(folder)
    for split in ("train", "validation"):
        assert summary["splits"][split] == {"documents": documents[split], "tokens": len(expected[split])}
        stream = TokenStream(prepared, split)
        np.testing.assert_array_equal(stream.read(0, stream.num_tokens), expected[split])
    assert summary["text_bytes"] == sum(f.stat().st_size for f in root.iterdir())
    info = _run(capsys, "info", str(root), "--tokenizer", "byte")
    assert info == {k: v for k, v in summary.items() if k != "seconds"}
    again = _run(capsys, "prepare", str(root), "--tokenizer", "byte", "--no-progress")  # reused
    assert again["fingerprint"] == summary["fingerprint"] and _prepared_entries(data_dir) == [folder.name]
    other = _run(
        capsys,
        "prepare",
        str(root),
        "--tokenizer",
        "byte",
        "--validation-fraction",
        "0.5",
        "--data-dir",
        str(tmp_path / "elsewhere"),
        "--no-progress",
    )
    assert other["fingerprint"] != summary["fingerprint"] and other["validation_fraction"] == 0.5
    assert Path(other["folder"]).parent == tmp_path / "elsewhere" / "prepared"


def test_preset_tokenizer_and_tokenizer_files(tmp_path, data_dir, capsys):
    """--preset takes that preset's tokenizer settings (bert-tiny: a 512-token WordPiece, trained on
    this corpus and cached); a tokenizer.json is used as it is, whatever the preset's vocab_size."""
    from cottention_jax.data import tokenization

    root = tmp_path / "notes"
    write_text_files(root, fresh_rng(), [f"{i}.txt" for i in range(5)])
    data_cli.main(["prepare", str(root), "--preset", "bert-tiny", "--no-progress"])
    out, err = capsys.readouterr()
    bert = json.loads(out)  # stdout is the JSON alone; news go to stderr
    assert "training a wordpiece tokenizer (512 tokens)" in err
    assert bert["tokenizer"]["kind"] == "wordpiece" and bert["tokenizer"]["vocab_size"] <= 512
    assert len(list((data_dir / "tokenizers").glob("*-wordpiece-512.json"))) == 1
    assert _run(capsys, "info", str(root), "--preset", "bert-tiny")["fingerprint"] == bert["fingerprint"]
    path = tokenization.get_tokenizer("bpe", vocab_size=512).save(tmp_path / "bpe" / "tokenizer.json")
    given = _run(capsys, "prepare", str(root), "--tokenizer", str(path), "--preset", "gpt-small", "--no-progress")
    assert given["tokenizer"] == {"kind": "bpe", "vocab_size": 512}
    assert (Path(given["folder"]) / "tokenizer.json").read_text() == path.read_text()


@pytest.mark.parametrize("case", ["missing", "binary", "bad-jsonl", "bad-corpus-form", "bad-tokenizer"])
def test_mistakes_end_in_one_line_and_prepare_nothing(tmp_path, data_dir, capsys, case):
    root = tmp_path / "corpus"
    write_text_files(root, fresh_rng(), ["a.txt", "b.txt"])
    if case == "missing":
        argv, names = (
            [str(tmp_path / "absent" / "notes.txt")],
            ["MissingDataError", "absent/notes.txt", "does not exist"],
        )
    elif case == "binary":
        (root / "c.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
        argv, names = [str(root)], ["DataSourceError", str(root / "c.txt"), "is not a text file"]
    elif case == "bad-jsonl":
        (root / "d.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
        argv, names = [str(root)], ["DataSourceError", str(root / "d.jsonl"), "line 2", "data.text_field"]
    elif case == "bad-corpus-form":
        argv, names = ["tfds:a:b:c"], ["ValueError", "data.corpus"]
    else:
        argv, names = [str(root), "--tokenizer", "sentencepiece"], ["ValueError", "data.tokenizer"]
    if case != "bad-tokenizer":
        argv += ["--tokenizer", "byte"]
    message = _fails(capsys, "prepare", *argv, "--no-progress")
    for name in names:
        assert name in message, (name, message)
    assert "Traceback" not in message
    assert _prepared_entries(data_dir) == []  # no folder, no temporary folder
    if case in ("missing", "bad-corpus-form", "bad-tokenizer"):
        assert not data_dir.exists()  # found before anything was written


def test_console_script_exists_and_exits_with_status_1(tmp_path):
    script = Path(sys.executable).parent / "cottention-data"
    assert script.is_file(), "the cottention-data console script is not installed in this environment"
    env = {**os.environ, "COTTENTION_DATA_DIR": str(tmp_path / "data"), "JAX_PLATFORMS": "cpu"}
    root = tmp_path / "notes"
    write_text_files(root, fresh_rng(), ["a.txt", "b.txt", "c.txt"])
    info = subprocess.run(
        [str(script), "info", str(root), "--tokenizer", "byte"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert info.returncode == 1 and info.stdout == ""
    lines = info.stderr.strip().splitlines()
    assert len(lines) == 1 and "cottention-data prepare" in lines[0], info.stderr
    done = subprocess.run(
        [str(script), "prepare", str(root), "--tokenizer", "byte", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)["folder"]).parent == tmp_path / "data" / "prepared"
