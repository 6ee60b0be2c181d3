"""prepare_text: token streams against an independent construction, the split, the fingerprint cache,
concurrent and failed builds, the tokenizer it uses, and memory that does not grow with the corpus."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cottention_jax.data import corpus as corpus_lib
from cottention_jax.data import paths, prepare, tokenization
from cottention_jax.data.documents import DataSourceError, open_source
from cottention_jax.data.pipeline import TokenStream
from tests.data._fixtures import (
    expected_streams,
    fresh_rng,
    mock_lm1b,
    offline_tfds,
    random_prose,
    validation_groups,
    write_text_files,
)

REPO = Path(__file__).resolve().parents[2]
BYTE = tokenization.ByteTokenizer()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh data dir, also as $COTTENTION_DATA_DIR, so nothing lands in the user's cache."""
    folder = tmp_path / "data"
    monkeypatch.setenv("COTTENTION_DATA_DIR", str(folder))
    return folder


def _read(prepared, split) -> np.ndarray:
    stream = TokenStream(prepared, split)
    return stream.read(0, stream.num_tokens)


def _built(data_dir) -> list[str]:
    """The entries of <data_dir>/prepared/ other than lock files (complete folders, or debris)."""
    root = Path(data_dir) / "prepared"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.is_dir() else []


def _corpus(root: Path, rng, big: bool = True) -> Path:
    """Text files (one big enough to be cut into many pieces) and a JSONL file, under root."""
    write_text_files(root, rng, [f"notes/{i}.md" for i in range(5)], low=3, high=30)
    if big:
        (root / "book.txt").write_text(random_prose(rng, 700), encoding="utf-8")  # ~40 KB
    with (root / "more.jsonl").open("w", encoding="utf-8") as f:
        for i in range(12):
            f.write(json.dumps({"text": random_prose(rng, int(rng.integers(1, 8))), "body": f"body {i}"}) + "\n")
    return root


def _quiet(**kwargs):
    return {"log": lambda message: None, **kwargs}


# ---------------------------------------------------------------- the streams


@pytest.mark.parametrize("kind", ["byte", "bpe-file"])
def test_streams_equal_an_independent_construction(tmp_path, data_dir, kind):
    rng = fresh_rng()
    root = _corpus(tmp_path / "corpus", rng)
    if kind == "byte":
        tokenizer, tok = "byte", BYTE
    else:
        trained = tokenization.train_tokenizer("bpe", [random_prose(rng, 200)], 300)
        tokenizer = str(trained.save(tmp_path / "tok" / "tokenizer.json"))
        tok = tokenization.load_tokenizer(tokenizer)
    fraction = 0.4
    prepared = prepare.prepare_text(
        str(root), tokenizer=tokenizer, validation_fraction=fraction, data_dir=data_dir, **_quiet()
    )
    pieces = list(open_source(str(root)).pieces())
    expected, documents = expected_streams(pieces, tok.encode, tok.eos_id, fraction)
    assert prepared.splits == ("train", "validation")
    for split in ("train", "validation"):
        got = _read(prepared, split)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected[split])
        assert prepared.num_tokens(split) == len(expected[split])
        assert prepared.num_documents(split) == documents[split]
    assert prepared.separator_id == tok.eos_id
    assert prepared.meta["dtype"] == "uint16"  # a small vocabulary: 2 bytes a token
    for split in prepared.splits:
        sizes = [os.path.getsize(s) for s in prepared.shards(split)]
        assert sum(sizes) >= 2 * prepared.num_tokens(split)
    assert prepared.meta["text_bytes"] == sum(len(p.text.encode()) for p in pieces)
    assert prepared.meta["fingerprint"].startswith(prepared.folder.name.split("-", 1)[1])
    assert prepared.tokenizer.to_json() == tok.to_json()
    # The big book's pieces went to both splits, so the cross-split separator rule was exercised.
    held_out = validation_groups((p.group for p in pieces), fraction)
    book = [p.group in held_out for p in pieces if "book.txt#" in p.group]
    assert len(book) > 8 and any(book) and not all(book)
    # Train and validation are disjoint and cover every group.
    assert held_out and held_out < {p.group for p in pieces}


def test_the_files_of_a_split_are_records_of_fixed_size(tmp_path, data_dir, monkeypatch):
    """Records of RECORD_TOKENS tokens (the last one shorter), across shards: read back at any offset."""
    monkeypatch.setattr(prepare, "RECORD_TOKENS", 64)
    monkeypatch.setattr(prepare, "SHARD_RECORDS", 5)
    rng = fresh_rng()
    root = _corpus(tmp_path / "corpus", rng)
    prepared = prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, **_quiet())
    expected, _ = expected_streams(open_source(str(root)).pieces(), BYTE.encode, BYTE.eos_id)
    assert prepared.meta["record_tokens"] == 64
    from array_record.python import array_record_data_source

    for split in ("train", "validation"):
        n = prepared.num_tokens(split)
        shards = prepared.shards(split)
        assert len(shards) == -(-n // (64 * 5))
        records = array_record_data_source.ArrayRecordDataSource(shards)
        lengths = [len(records[i]) // 2 for i in range(len(records))]
        assert lengths[:-1] == [64] * (len(lengths) - 1) and 0 < lengths[-1] <= 64
        stream = TokenStream(prepared, split)
        for _ in range(50):
            start = int(rng.integers(0, n))
            stop = int(rng.integers(start, min(n, start + 300) + 1))
            np.testing.assert_array_equal(stream.read(start, stop), expected[split][start:stop])
        with pytest.raises(IndexError):
            stream.read(0, n + 1)


def test_builtin_split_is_split_documents(data_dir):
    prepared = prepare.prepare_text("shakespeare", tokenizer="byte", data_dir=data_dir, **_quiet())
    documents = corpus_lib.load_embedded_corpus()
    split = corpus_lib.split_documents(documents)
    validation = {d.doc_id for d in split["validation"]}
    assert validation and len(validation) == round(0.1 * 42)
    for name, members in (
        ("train", lambda d: d.doc_id not in validation),
        ("validation", lambda d: d.doc_id in validation),
    ):
        chosen = [d for d in documents if members(d)]
        expected = np.concatenate(
            [np.append(np.frombuffer(d.text.encode(), np.uint8).astype(np.int32), BYTE.eos_id) for d in chosen]
        )
        np.testing.assert_array_equal(_read(prepared, name), expected)
        assert prepared.num_documents(name) == len(chosen) == len(split[name])
    assert prepared.meta["corpus"] == "shakespeare"
    assert "shakespeare (train 38 documents" in prepared.describe()


def test_large_vocabulary_is_stored_as_int32(tmp_path, data_dir):
    """Ids above 65535 survive: a vocabulary beyond uint16 is written as int32."""
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    rng = fresh_rng()
    root = write_text_files(tmp_path / "c", rng, ["a.txt", "b.txt", "c.txt"])[0].parent
    words = sorted({w for f in root.iterdir() for w in f.read_text().split()})
    vocab = {f"filler{i}": i for i in range(70_000)}
    vocab.update({w: 70_000 + i for i, w in enumerate(words)})
    vocab.update({"<unk>": len(vocab), "</s>": len(vocab) + 1})
    hf = HF(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(["</s>", "<unk>"])
    path = tmp_path / "wordlevel.json"
    hf.save(str(path))
    tok = tokenization.load_tokenizer(path)
    assert tok.eos_id == vocab["</s>"] and tok.vocab_size > 1 << 16
    prepared = prepare.prepare_text(
        str(root), tokenizer=str(path), validation_fraction=0.34, data_dir=data_dir, **_quiet()
    )
    assert prepared.meta["dtype"] == "int32"
    expected, _ = expected_streams(open_source(str(root)).pieces(), tok.encode, tok.eos_id, 0.34)
    for split in ("train", "validation"):
        got = _read(prepared, split)
        np.testing.assert_array_equal(got, expected[split])
        assert got.max() > 1 << 16


def test_a_tokenizer_without_eos_separates_with_sep(tmp_path, data_dir):
    wordpiece = tokenization.get_tokenizer("wordpiece", vocab_size=512)
    path = wordpiece.save(tmp_path / "wp.json")
    root = _corpus(tmp_path / "corpus", fresh_rng(), big=False)
    prepared = prepare.prepare_text(str(root), tokenizer=str(path), data_dir=data_dir, **_quiet())
    assert wordpiece.eos_id is None and prepared.separator_id == wordpiece.sep_id
    expected, _ = expected_streams(open_source(str(root)).pieces(), wordpiece.encode, wordpiece.sep_id)
    np.testing.assert_array_equal(_read(prepared, "validation"), expected["validation"])


def test_fixed_tfds_splits_are_kept(tmp_path, data_dir, monkeypatch):
    offline_tfds(tmp_path, monkeypatch)
    with mock_lm1b(tmp_path, num_examples=9):
        prepared = prepare.prepare_text("tfds:lm1b", tokenizer="byte", data_dir=data_dir, **_quiet())
        pieces = list(open_source("tfds:lm1b").pieces())
    expected, documents = expected_streams(pieces, BYTE.encode, BYTE.eos_id)
    assert documents == {"train": 9, "validation": 9}
    for split in ("train", "validation"):
        np.testing.assert_array_equal(_read(prepared, split), expected[split])
        assert prepared.num_documents(split) == 9
    assert prepared.meta["corpus"] == "tfds:lm1b"


def test_too_few_documents_to_split(tmp_path, data_dir):
    path = tmp_path / "one.jsonl"
    path.write_text('{"text": "only one document"}\n')
    with pytest.raises(
        DataSourceError,
        match=r"holds 1 document\(s\); a train and a validation split need at "
        "least 2",
    ):
        prepare.prepare_text(str(path), tokenizer="byte", data_dir=data_dir, **_quiet())
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        prepare.prepare_text(str(path), tokenizer="byte", data_dir=data_dir, validation_fraction=1.0, **_quiet())
    assert _built(data_dir) == []


# ---------------------------------------------------------------- the fingerprint cache


def test_same_arguments_reuse_the_folder_and_any_change_prepares_anew(tmp_path, data_dir, monkeypatch):
    rng = fresh_rng()
    root = _corpus(tmp_path / "corpus", rng, big=False)
    args = dict(tokenizer="byte", data_dir=data_dir, **_quiet())
    first = prepare.prepare_text(str(root), **args)
    stamp = (first.folder / "meta.json").stat().st_mtime_ns
    real = prepare._tokenize_into
    builds = []

    def counting(*a, **k):
        builds.append(a[1].name)
        return real(*a, **k)

    monkeypatch.setattr(prepare, "_tokenize_into", counting)
    again = prepare.prepare_text(str(root), **args)
    assert again.folder == first.folder and again.meta == first.meta and builds == []
    assert (first.folder / "meta.json").stat().st_mtime_ns == stamp
    assert prepare.prepare_text(str(root), **{**args, "build": False}).folder == first.folder
    assert prepare.open_prepared(first.folder).meta == first.meta

    folders = [first.folder]

    def changed(**kwargs):
        folder = prepare.prepare_text(str(root), **{**args, **kwargs}).folder
        assert folder not in folders, kwargs
        folders.append(folder)

    changed(validation_fraction=0.3)
    changed(text_field="body")
    tok = tokenization.train_tokenizer("bpe", [random_prose(rng, 100)], 300)
    changed(tokenizer=str(tok.save(tmp_path / "tok.json")))
    note = root / "notes" / "0.md"
    st = note.stat()
    os.utime(note, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))  # same bytes, newer
    changed()
    note.write_text(note.read_text() + "One more line.\n")
    changed()
    assert len(builds) == 5
    assert _built(data_dir) == sorted(f.name for f in folders)
    assert len({prepare.open_prepared(f).meta["fingerprint"] for f in folders}) == len(folders)


def test_build_false_names_the_prepare_command(tmp_path, data_dir):
    root = _corpus(tmp_path / "my corpus", fresh_rng(), big=False)
    for tokenizer, vocab_size in (("byte", None), ("bpe", 300)):
        with pytest.raises(paths.MissingDataError, match="is not prepared") as caught:
            prepare.prepare_text(
                str(root), tokenizer=tokenizer, vocab_size=vocab_size, data_dir=data_dir, build=False, **_quiet()
            )
        assert f"cottention-data prepare '{root}'" in str(caught.value)  # quoted: the path has a space
    assert not (data_dir / "prepared").exists() or _built(data_dir) == []
    assert not (data_dir / "tokenizers").exists()


# ---------------------------------------------------------------- concurrent and failed builds

_RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cottention_jax.data import prepare

    corpus, data_dir, go = sys.argv[1:4]
    real = prepare._tokenize_into

    def slow(*args, **kwargs):
        print("BUILD", flush=True)
        time.sleep(1.0)                      # hold the lock while the other process arrives
        return real(*args, **kwargs)

    prepare._tokenize_into = slow
    while not Path(go).exists():
        time.sleep(0.01)
    prepared = prepare.prepare_text(corpus, tokenizer="byte", data_dir=data_dir, log=lambda m: None)
    print("FOLDER", prepared.folder, prepared.num_tokens("train"), flush=True)
""")


def test_two_processes_preparing_at_once_share_one_build(tmp_path, data_dir):
    root = _corpus(tmp_path / "corpus", fresh_rng())
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(root), str(data_dir), str(go)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        outputs.append(out)
    folders = [line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("FOLDER")]
    assert len(folders) == 2 and folders[0] == folders[1]
    assert sum(out.count("BUILD") for out in outputs) == 1
    assert _built(data_dir) == [Path(folders[0][0]).name]
    prepared = prepare.open_prepared(folders[0][0])
    expected, _ = expected_streams(open_source(str(root)).pieces(), BYTE.encode, BYTE.eos_id)
    np.testing.assert_array_equal(_read(prepared, "train"), expected["train"])


def test_a_failed_build_leaves_nothing(tmp_path, data_dir):
    rng = fresh_rng()
    root = tmp_path / "corpus"
    write_text_files(root, rng, ["a.txt", "c.txt"])
    bad = root / "b.txt"
    bad.write_bytes(b"GIF89a\x00\x01\x00\x01" + bytes(range(256)))
    with pytest.raises(DataSourceError, match=re.escape(f"{bad} is not a text file")):
        prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, **_quiet())
    assert _built(data_dir) == []
    bad.write_text(random_prose(rng, 5))  # mended: it prepares
    prepared = prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, **_quiet())
    assert _built(data_dir) == [prepared.folder.name]


def test_a_build_failing_halfway_leaves_nothing(tmp_path, data_dir, monkeypatch):
    """Tokenization fails after shards were written: neither the folder nor its temporary remains,
    and the next call builds it whole."""
    rng = fresh_rng()
    root = _corpus(tmp_path / "corpus", rng)
    monkeypatch.setattr(prepare, "BATCH_BYTES", 1500)
    monkeypatch.setattr(prepare, "RECORD_TOKENS", 256)
    seen = []

    class Failing(tokenization.ByteTokenizer):
        calls = 0

        def encode_batch(self, texts):
            Failing.calls += 1
            if Failing.calls == 3:  # after the first records are written
                seen.extend(Path(data_dir, "prepared").glob("*.tmp*/*.array_record"))
                raise RuntimeError("disk on fire")
            return super().encode_batch(texts)

    real = prepare.resolve_tokenizer
    monkeypatch.setattr(prepare, "resolve_tokenizer", lambda *a, **k: Failing())
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, **_quiet())
    assert seen  # it did fail halfway through writing
    assert _built(data_dir) == []
    monkeypatch.setattr(prepare, "resolve_tokenizer", real)
    prepared = prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, **_quiet())
    expected, _ = expected_streams(open_source(str(root)).pieces(), BYTE.encode, BYTE.eos_id)
    np.testing.assert_array_equal(_read(prepared, "validation"), expected["validation"])
    assert _built(data_dir) == [prepared.folder.name]


def test_stale_debris_of_a_killed_build_is_swept(tmp_path, data_dir):
    """A folder without meta.json (a killed build's rename never happened) and an old .tmp folder:
    the next build replaces the one and removes the other."""
    root = _corpus(tmp_path / "corpus", fresh_rng(), big=False)
    prepared = prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, **_quiet())
    (prepared.folder / "meta.json").unlink()
    debris = prepared.folder.with_name(prepared.folder.name + ".tmp12345")
    (debris / "junk").mkdir(parents=True)
    with pytest.raises(paths.MissingDataError):
        prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, build=False, **_quiet())
    again = prepare.prepare_text(str(root), tokenizer="byte", data_dir=data_dir, **_quiet())
    assert again.folder == prepared.folder and (again.folder / "meta.json").is_file()
    assert _built(data_dir) == [prepared.folder.name]


# ---------------------------------------------------------------- the tokenizer


def test_tokenizer_file_is_used_as_is(tmp_path, data_dir):
    rng = fresh_rng()
    trained = tokenization.train_tokenizer("bpe", [random_prose(rng, 150)], 300)
    path = trained.save(tmp_path / "given" / "tokenizer.json")
    root = _corpus(tmp_path / "corpus", rng, big=False)
    prepared = prepare.prepare_text(str(root), tokenizer=str(path), data_dir=data_dir, **_quiet())
    assert (prepared.folder / "tokenizer.json").read_text() == path.read_text()
    assert prepared.tokenizer.to_json() == trained.to_json()
    assert prepare.open_prepared(prepared.folder).tokenizer.to_json() == trained.to_json()
    assert not (data_dir / "tokenizers").exists()  # nothing trained
    with pytest.raises(paths.MissingDataError, match="absent.json"):
        prepare.prepare_text(str(root), tokenizer=str(tmp_path / "absent.json"), data_dir=data_dir, **_quiet())


def test_a_trained_tokenizer_sees_only_the_train_split(tmp_path, data_dir, monkeypatch):
    rng = fresh_rng()
    root = _corpus(tmp_path / "corpus", rng)
    fraction = 0.3
    real = tokenization.train_tokenizer
    trained_on = []

    def capturing(kind, texts, vocab_size=None, lowercase=False):
        texts = list(texts)
        trained_on.append(texts)
        return real(kind, texts, vocab_size, lowercase)

    monkeypatch.setattr(tokenization, "train_tokenizer", capturing)
    messages = []
    prepared = prepare.prepare_text(
        str(root), tokenizer="bpe", vocab_size=300, validation_fraction=fraction, data_dir=data_dir, log=messages.append
    )
    pieces = list(open_source(str(root)).pieces())
    held_out = validation_groups((p.group for p in pieces), fraction)
    assert trained_on == [[p.text for p in pieces if p.group not in held_out]]
    assert any("training a bpe tokenizer (300 tokens)" in m for m in messages)
    cached = list((data_dir / "tokenizers").glob("*-bpe-300.json"))
    assert len(cached) == 1
    assert cached[0].read_text() == (prepared.folder / "tokenizer.json").read_text()
    assert prepared.meta["tokenizer"] == {"kind": "bpe", "vocab_size": prepared.tokenizer.vocab_size}
    assert 259 < prepared.tokenizer.vocab_size <= 300
    expected, _ = expected_streams(pieces, prepared.tokenizer.encode, prepared.tokenizer.eos_id, fraction)
    np.testing.assert_array_equal(_read(prepared, "train"), expected["train"])
    again = prepare.prepare_text(
        str(root), tokenizer="bpe", vocab_size=300, validation_fraction=fraction, data_dir=data_dir, log=messages.append
    )
    assert again.folder == prepared.folder and len(trained_on) == 1  # cached: not trained twice


def test_builtin_corpus_uses_the_shipped_tokenizer(data_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the shipped tokenizer must be used, not a new one trained")

    monkeypatch.setattr(tokenization, "train_tokenizer", refuse)
    tok = prepare.resolve_tokenizer(open_source("shakespeare"), "bpe", 512, 0.1, data_dir)
    assert tok.to_json() == tokenization.get_tokenizer("bpe", "shakespeare", 512).to_json()


# ---------------------------------------------------------------- memory

_MEASURE = textwrap.dedent("""
    import json, re, resource, sys
    from cottention_jax.data import prepare

    prepare.BATCH_BYTES = int(sys.argv[3])        # many batches at either size: their peak is reached early

    def status(field):
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    try:    # reset the peak to the present (Linux >= 4.0): the imports' own transient peak does not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, peak = status("VmRSS"), lambda: status("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prepared = prepare.prepare_text(sys.argv[1], tokenizer="byte", data_dir=sys.argv[2], log=lambda m: None)
    print(json.dumps({"growth_kb": peak() - before, "tokens": prepared.num_tokens("train")}))
""")

_WORDS = np.array(
    "the quiet river carried a lantern past seven sleeping towns while an old ferryman "
    "counted stars and hummed about bread salt rain copper wheels".split()
)


def _write_megabytes(folder: Path, rng, megabytes: int) -> None:
    """`megabytes` MiB of random words in files of 16 KiB, lines of 100 characters. Small files keep
    every piece small whatever the corpus size, so that only what grows with the corpus can differ."""
    folder.mkdir(parents=True)
    for i in range(megabytes):
        text = " ".join(_WORDS[rng.integers(0, len(_WORDS), 200_000)])[: 1 << 20]
        for k in range(64):
            part = text[k << 14 : (k + 1) << 14]
            (folder / f"part{i:03d}-{k:02d}.txt").write_text(
                "\n".join(part[j : j + 100] for j in range(0, len(part), 100)) + "\n", encoding="utf-8"
            )


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """Peak RSS growth while preparing 20 MB vs 5 MB, each in a fresh process, with 1 MiB batches:
    batches and pieces are bounded and nothing holds the corpus, so the peaks differ little.

    Measured (byte tokenizer): ~31 MB growth at 5 MB, ~44 MB at 20 MB. Holding the tokens as int32
    arrays made it ~49 and ~120 MB (a difference of ~73 MB); the bound sits between.
    """
    rng = fresh_rng()
    growth = {}
    for megabytes in (5, 20):
        corpus = tmp_path / f"c{megabytes}"
        _write_megabytes(corpus, rng, megabytes)
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(corpus), str(tmp_path / f"d{megabytes}"), str(1 << 20)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["tokens"] > 0.8 * megabytes * 2**20
        growth[megabytes] = result["growth_kb"] / 1024
    assert growth[20] - growth[5] < 40, growth
