"""Small synthetic inputs for the data tests: random prose, corpora, and archives in registry formats."""

from __future__ import annotations

import io
import itertools
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

from cottention_jax.data import corpus as corpus_lib

_seeds = itertools.count(7_000)

_WORDS = (
    "the quiet river carried a lantern past seven sleeping towns while an old "
    "ferryman counted stars and hummed about bread salt rain copper wheels "
    "bright morning owls over green hills beneath iron bridges"
).split()


def fresh_rng() -> np.random.Generator:
    """A new generator for every call, so no two tests share inputs."""
    return np.random.default_rng(next(_seeds))


def random_prose(rng: np.random.Generator, n_sentences: int) -> str:
    """Sentences of random words with capitals, commas and full stops, one paragraph per 3."""
    sentences = []
    for i in range(n_sentences):
        words = list(rng.choice(_WORDS, size=int(rng.integers(4, 12))))
        words[0] = words[0].capitalize()
        if len(words) > 5:
            words[2] += ","
        sentences.append(" ".join(words) + ("." if i % 4 else "!"))
    return "\n\n".join(" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)) + "\n"


def random_documents(rng, n_docs: int, n_sentences: int = 20, groups: int | None = None):
    """Documents doc00, doc01, ...; with `groups`, doc i belongs to group i % groups."""
    return [
        corpus_lib.Document(
            doc_id=f"doc{i:02d}",
            title=f"Doc {i}",
            text=random_prose(rng, n_sentences),
            source="synthetic",
            group=f"g{i % groups}" if groups else "",
        )
        for i in range(n_docs)
    ]


def write_mixed_corpus(data_dir, documents) -> Path:
    """Install `documents` as the "mixed" corpus of data_dir (as build_corpus.py --mixed would)."""
    directory = corpus_lib.corpus_dir("mixed", data_dir)
    corpus_lib.write_corpus(directory, "mixed", documents, "# Provenance: synthetic test corpus\n")
    return directory


def tar_bytes(files: dict[str, bytes], gz: bool = True) -> bytes:
    """A tar(.gz) archive holding `files` {member name: content}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_ztext(folder: Path, testament: str, slots: list[str], block_size: int = 3) -> None:
    """Write `slots` (raw OSIS per verse slot) as a SWORD zText testament: .bzs/.bzz/.bzv.

    Slots are grouped `block_size` at a time into zlib blocks.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bzs, bzz, bzv = bytearray(), bytearray(), bytearray()
    for first in range(0, len(slots), block_size):
        block, offsets = bytearray(), []
        for raw in slots[first : first + block_size]:
            data = raw.encode("utf-8")
            offsets.append((len(block), len(data)))
            block += data
        compressed = zlib.compress(bytes(block))
        bzs += struct.pack("<III", len(bzz), len(compressed), len(block))
        bzz += compressed
        for offset, size in offsets:
            bzv += struct.pack("<IIH", first // block_size, offset, size)
    for ext, content in (("bzs", bzs), ("bzz", bzz), ("bzv", bzv)):
        (folder / f"{testament}.{ext}").write_bytes(bytes(content))


# ---------------------------------------------------------------- prepared text (issue 18)

_SPLIT_SEED = 20240926  # corpus.split_documents' seed: the split is part of the data


def write_text_files(folder: Path, rng: np.random.Generator, names, low: int = 8, high: int = 60) -> list[Path]:
    """Random-prose text files `names` (relative paths) under folder; returns their paths."""
    out = []
    for name in names:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(random_prose(rng, int(rng.integers(low, high))), encoding="utf-8")
        out.append(path)
    return out


def validation_groups(groups, fraction: float) -> set:
    """The held-out groups, by the rule of `corpus.split_documents` written out again: the
    round(fraction * G) groups (at least 1, at most G - 1) whose SHA-256 of "<seed>:<group>" sorts first."""
    import hashlib

    groups = sorted(set(groups))
    n_val = min(max(1, round(fraction * len(groups))), len(groups) - 1)
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{_SPLIT_SEED}:{g}".encode()).hexdigest())
    return set(ranked[:n_val])


def expected_streams(pieces, encode, separator: int, fraction: float = 0.1):
    """({split: token stream}, {split: documents}) built piece by piece, independently of prepare.py.

    A piece's split: its own (a TFDS split) or by its group. Each split's stream is its pieces'
    tokens in source order; the separator follows a piece that ends its document, and a piece
    whose document continues in the other split. A split's documents: its pieces that start a
    document, or whose previous piece went to the other split.
    """
    pieces = list(pieces)
    if any(p.split is not None for p in pieces):
        splits = ["train" if p.split == "train" else "validation" for p in pieces]
    else:
        held_out = validation_groups((p.group for p in pieces), fraction)
        splits = ["validation" if p.group in held_out else "train" for p in pieces]
    streams = {"train": [], "validation": []}
    documents = {"train": 0, "validation": 0}
    for i, (piece, split) in enumerate(zip(pieces, splits, strict=True)):
        documents[split] += int(i == 0 or pieces[i - 1].ends or splits[i - 1] != split)
        streams[split] += list(encode(piece.text))
        if piece.ends or splits[i + 1] != split:
            streams[split].append(separator)
    return {s: np.asarray(v, np.int64) for s, v in streams.items()}, documents


# ---------------------------------------------------------------- TFDS without a download


def offline_tfds(tmp_path: Path, monkeypatch):
    """An empty TFDS data dir as $TFDS_DATA_DIR, and sockets that fail the test if anything connects.
    Returns (tensorflow_datasets, that dir); skips where TFDS is not installed."""
    import socket

    import pytest

    tfds = pytest.importorskip("tensorflow_datasets")

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    home = Path(tmp_path) / "tfds_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("TFDS_DATA_DIR", str(home))
    return tfds, home


def mock_lm1b(tmp_path: Path, num_examples: int):
    """`tfds.testing.mock_data` for lm1b with its real split names, train and test (no validation), in
    metadata written here (without it a mocked dataset accepts any split name); a context manager.
    Call offline_tfds first."""
    import tensorflow_datasets as tfds
    import tensorflow_datasets.datasets.lm1b.lm1b_dataset_builder  # noqa: F401  (registers lm1b)
    from tensorflow_datasets.core import splits as splits_lib

    meta = Path(tmp_path) / "tfds_meta"
    builder = tfds.builder("lm1b", data_dir=str(meta), file_format="array_record")
    builder.info.set_splits(
        splits_lib.SplitDict(
            [
                splits_lib.SplitInfo(name=name, shard_lengths=[num_examples], num_bytes=0, filename_template=None)
                for name in ("train", "test")
            ]
        )
    )
    Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(meta)
    )
