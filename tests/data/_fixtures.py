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

_WORDS = ("the quiet river carried a lantern past seven sleeping towns while an old "
          "ferryman counted stars and hummed about bread salt rain copper wheels "
          "bright morning owls over green hills beneath iron bridges").split()


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
    return "\n\n".join(" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3)) + "\n"


def random_documents(rng, n_docs: int, n_sentences: int = 20, groups: int | None = None):
    """Documents doc00, doc01, ...; with `groups`, doc i belongs to group i % groups."""
    return [corpus_lib.Document(doc_id=f"doc{i:02d}", title=f"Doc {i}",
                                text=random_prose(rng, n_sentences), source="synthetic",
                                group=f"g{i % groups}" if groups else "")
            for i in range(n_docs)]


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
        for raw in slots[first:first + block_size]:
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
