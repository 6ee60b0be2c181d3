"""TFDS local builders: build, read back with tfds.data_source (no TensorFlow), splits, damage."""

from __future__ import annotations

import importlib.abc
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cottention_jax.data import builders, corpus, paths, tasks, tokenization
from tests.data._fixtures import fresh_rng, random_documents, random_prose, write_mixed_corpus


class _RefuseTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


@pytest.fixture
def no_tensorflow(monkeypatch):
    """Make `import tensorflow` fail, as on a machine without it; check it was never imported."""
    already = "tensorflow" in sys.modules  # only where TF is installed and something loaded it
    if not already:
        monkeypatch.setattr(sys, "meta_path", [_RefuseTensorFlow(), *sys.meta_path])
    yield
    assert already or "tensorflow" not in sys.modules


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    """The default dataset (embedded Shakespeare, shipped BPE tokenizer), built as `make run` would."""
    return builders.load_text_dataset("shakespeare", "bpe", data_dir=tmp_path_factory.mktemp("data"))


def test_default_dataset_builds_and_splits_by_document(default_dataset):
    ds = default_dataset
    docs = {d.doc_id: d for d in corpus.load_embedded_corpus()}
    split = corpus.split_documents(docs.values())
    for name in ("train", "validation"):
        assert ds.doc_ids[name] == [d.doc_id for d in split[name]]
    assert not set(ds.doc_ids["train"]) & set(ds.doc_ids["validation"])
    assert ds.tokenizer.to_json() == tokenization.get_tokenizer("bpe").to_json()
    for name, doc_id in [("train", ds.doc_ids["train"][3]), ("validation", ds.doc_ids["validation"][1])]:
        tokens = ds.documents[name][ds.doc_ids[name].index(doc_id)]
        assert tokens.dtype == np.int32
        assert ds.tokenizer.decode(tokens) == docs[doc_id].text  # the whole work, exactly
    assert (paths.default_data_dir() / "tfds") not in ds.path.parents


def test_build_and_read_without_tensorflow(tmp_path, no_tensorflow):
    documents = random_documents(fresh_rng(), 10, 12, groups=7)
    write_mixed_corpus(tmp_path, documents)
    ds = builders.load_text_dataset("mixed", "bpe", vocab_size=300, data_dir=tmp_path)
    assert ds.name == "mixed_bpe300"
    assert ds.path == tmp_path / "tfds" / "cottention_text" / "mixed_bpe300" / "1.0.0"
    assert sorted(p.name for p in ds.path.glob("*.array_record-*")) == [
        "cottention_text-train.array_record-00000-of-00001",
        "cottention_text-validation.array_record-00000-of-00001"]
    by_id = {d.doc_id: d for d in documents}
    train_groups = {by_id[i].group for i in ds.doc_ids["train"]}
    assert not train_groups & {by_id[i].group for i in ds.doc_ids["validation"]}
    assert len(ds.doc_ids["train"]) + len(ds.doc_ids["validation"]) == 10
    for name in ("train", "validation"):
        for doc_id, tokens in zip(ds.doc_ids[name], ds.documents[name]):
            assert ds.tokenizer.decode(tokens) == by_id[doc_id].text
    # The tokenizer stored with the dataset is the cached one, trained on the training split.
    cached = tokenization.load_tokenizer(tmp_path / "tokenizers" / "mixed-bpe-300.json")
    assert cached.to_json() == ds.tokenizer.to_json()
    # Loading again reads the same data and does not rebuild.
    stamp = (ds.path / "dataset_info.json").stat().st_mtime_ns
    again = builders.load_text_dataset("mixed", "bpe", vocab_size=300, data_dir=tmp_path)
    assert (ds.path / "dataset_info.json").stat().st_mtime_ns == stamp
    assert all(np.array_equal(x, y) for x, y in zip(again.train, ds.train))


def test_missing_and_damaged_datasets(tmp_path):
    write_mixed_corpus(tmp_path, random_documents(fresh_rng(), 4, 6))
    with pytest.raises(paths.MissingDataError, match="build_corpus.py --prepare --corpus mixed "
                                                     "--tokenizer byte --vocab-size 263"):
        builders.load_text_dataset("mixed", "byte", data_dir=tmp_path, build=False)
    ds = builders.load_text_dataset("mixed", "byte", data_dir=tmp_path)
    shard = next(ds.path.glob("cottention_text-train.array_record-*"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(paths.CorruptDataError,
                       match="is corrupt .*\n    python experiments/build_corpus.py --prepare --rebuild "
                             "--corpus mixed"):
        builders.load_text_dataset("mixed", "byte", data_dir=tmp_path)
    (ds.path / paths.CHECKSUM_FILE).unlink()
    with pytest.raises(paths.MissingDataError, match="SHA256SUMS does not exist"):
        builders.load_text_dataset("mixed", "byte", data_dir=tmp_path)
    with pytest.raises(ValueError, match="tokenizer must be one of .*got 'chars'"):
        builders.load_text_dataset("mixed", "chars", data_dir=tmp_path)


def test_dataset_of_an_older_corpus_is_out_of_date(tmp_path):
    rng = fresh_rng()
    write_mixed_corpus(tmp_path, random_documents(rng, 4, 6))
    ds = builders.load_text_dataset("mixed", "byte", data_dir=tmp_path)
    write_mixed_corpus(tmp_path, random_documents(rng, 5, 6))  # the corpus was rebuilt
    with pytest.raises(paths.CorruptDataError, match=r"is out of date \(built from another version "
                                                     r"of its records\)\..*\n.*build_corpus.py --prepare --rebuild"):
        builders.load_text_dataset("mixed", "byte", data_dir=tmp_path)
    shutil.rmtree(ds.path)
    assert len(builders.load_text_dataset("mixed", "byte", data_dir=tmp_path).doc_ids["train"]) == 4



REPO = Path(__file__).resolve().parents[2]


def test_printed_rebuild_command_is_quoted_and_rebuilds_by_itself(tmp_path):
    """A data dir with a space, beside a folder named like its first word: the printed command, pasted
    into a shell, must rebuild the corrupt dataset and touch nothing else (it used to be an unquoted
    `rm -rf <dir with space>/... && ...`, which deleted the sibling and kept the corrupt shard)."""
    data_dir, sibling = tmp_path / "my data", tmp_path / "my"
    (sibling / "keep").mkdir(parents=True)
    write_mixed_corpus(data_dir, random_documents(fresh_rng(), 4, 6))
    ds = builders.load_text_dataset("mixed", "byte", data_dir=data_dir)
    shard = next(ds.path.glob("cottention_text-train.array_record-*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])      # truncated
    with pytest.raises(paths.CorruptDataError) as caught:
        builders.load_text_dataset("mixed", "byte", data_dir=data_dir)
    command = str(caught.value).splitlines()[-1].strip()
    argv = shlex.split(command)
    assert "rm" not in argv and "&&" not in argv and "--rebuild" in argv
    assert argv[argv.index("--data-dir") + 1] == str(data_dir)                # one argument, space and all
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(command, shell=True, cwd=REPO, env=env, check=True, capture_output=True)
    assert (sibling / "keep").is_dir()
    again = builders.load_text_dataset("mixed", "byte", data_dir=data_dir, build=False)
    assert [len(d) for d in again.train] == [len(d) for d in ds.train]
    assert all(np.array_equal(x, y) for x, y in zip(again.train, ds.train))


def test_rebuild_deletes_and_builds_again(tmp_path):
    write_mixed_corpus(tmp_path, random_documents(fresh_rng(), 4, 6))
    ds = builders.load_text_dataset("mixed", "byte", data_dir=tmp_path)
    stray = ds.path / "stray-file"
    stray.write_text("left by an earlier build")
    again = builders.load_text_dataset("mixed", "byte", data_dir=tmp_path, rebuild=True)
    assert not stray.exists() and all(np.array_equal(x, y) for x, y in zip(again.train, ds.train))
    with pytest.raises(ValueError, match="rebuild=True .* needs build=True"):
        builders.load_text_dataset("mixed", "byte", data_dir=tmp_path, build=False, rebuild=True)
    for name, rebuild in (("corpus", corpus.rebuild_command("mixed", tmp_path / "a b")),
                          ("task", tasks.task_rebuild_command("sentiment", tmp_path / "a;b"))):
        assert shlex.split(rebuild)[-1] == str(tmp_path / ("a b" if name == "corpus" else "a;b")), rebuild


def test_task_dataset_round_trip(tmp_path, no_tensorflow):
    rng = fresh_rng()
    write_mixed_corpus(tmp_path, random_documents(rng, 6, 15))
    examples = [{"id": f"p{i}", "text_a": random_prose(rng, 1), "text_b": random_prose(rng, 1),
                 "label": int(rng.integers(2)), "split": tasks.TASK_SPLITS[int(rng.integers(3))]}
                for i in range(40)]
    tasks.write_task("paraphrase", examples, "# synthetic\n", tmp_path)
    ds = builders.load_task_dataset("paraphrase", "mixed", "wordpiece", 400, data_dir=tmp_path)
    assert ds.is_pair and ds.label_names == ("different", "same")
    for name, split in ds.splits.items():
        expected = [e for e in examples if e["split"] == name]
        assert len(split) == len(expected)
        assert np.array_equal(split.labels, [e["label"] for e in expected])
        for i, example in enumerate(expected):
            assert split.texts_a[i] == example["text_a"]
            decoded = ds.tokenizer.decode(split.ids_b[i])
            assert "".join(decoded.split()) == "".join(example["text_b"].split())
    with pytest.raises(paths.MissingDataError, match="build_tasks.py --task sentiment"):
        builders.load_task_dataset("sentiment", "mixed", "wordpiece", 400, data_dir=tmp_path)
