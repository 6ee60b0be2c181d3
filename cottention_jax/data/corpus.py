"""Text corpora as lists of documents, and the split of a corpus by document.

A corpus is a folder `<name>/` holding

    <name>.jsonl.gz   one JSON object per line: {"doc_id", "title", "group", "source", "text"}
    PROVENANCE.md     where every document came from, and its licence
    SHA256SUMS        checksums of the two files above

`shakespeare` ships in the package (`cottention_jax/data/shipped/shakespeare/`, 42 works, about
5 MB of text, 2 MB gzipped). `mixed` (Shakespeare, Jane Austen, the Brown
Corpus and two Bible translations, tens of MB) is built on a machine by
`cottention-data build-mixed` into `<data_dir>/corpora/mixed/`.

Documents of one `group` (the same Bible book in two translations, say) always
land in the same split, so no text is in both the training and the validation split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from cottention_jax.data import paths

__all__ = [
    "CORPORA",
    "DEFAULT_VALIDATION_FRACTION",
    "Document",
    "corpus_dir",
    "embedded_corpus_provenance",
    "load_corpus",
    "load_embedded_corpus",
    "read_documents",
    "rebuild_command",
    "split_documents",
    "write_corpus",
]

CORPORA = ("shakespeare", "mixed")
EMBEDDED_CORPUS = "shakespeare"
DEFAULT_VALIDATION_FRACTION = 0.1
_SPLIT_SEED = 20240926  # fixed: the split is part of the dataset, not of a run


@dataclasses.dataclass(frozen=True)
class Document:
    """One work (a play, a novel, a Bible book in one translation, a Brown text).

    doc_id: unique within its corpus; group: documents sharing it are split together;
    source: the registry package and file it came from.
    """

    doc_id: str
    title: str
    text: str
    source: str
    group: str = ""

    def __post_init__(self):
        if not self.group:
            object.__setattr__(self, "group", self.doc_id)


def rebuild_command(name: str, data_dir=None) -> str:
    """The shell command that (re)builds corpus `name`."""
    if name == EMBEDDED_CORPUS:
        return paths.shipped_rebuild_command(name)
    where = [] if data_dir is None else ["--data-dir", str(data_dir)]
    return shlex.join(["cottention-data", f"build-{name}", *where])  # paths quoted


def corpus_dir(name: str, data_dir=None) -> Path:
    """The folder of corpus `name`: in the repository for the embedded one, else under data_dir."""
    if name not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {name!r}")
    if name == EMBEDDED_CORPUS:
        return paths.SHIPPED_DATA_DIR / name
    return paths.resolve_data_dir(data_dir) / "corpora" / name


def write_corpus(directory, name: str, documents: Sequence[Document], provenance: str) -> Path:
    """Write `<directory>/<name>.jsonl.gz`, PROVENANCE.md and SHA256SUMS; byte-reproducible.

    Returns the path of the .jsonl.gz file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = [d.doc_id for d in documents]
    if len(set(ids)) != len(ids):
        raise ValueError(f"documents: doc_id values must be unique, got {len(ids)} ids, {len(set(ids))} distinct")
    out = paths.write_jsonl_gz(directory / f"{name}.jsonl.gz", (dataclasses.asdict(d) for d in documents))
    (directory / "PROVENANCE.md").write_text(provenance, encoding="utf-8")
    paths.write_checksums(directory, [out.name, "PROVENANCE.md"])
    return out


def read_documents(path, rebuild: str) -> list[Document]:
    """Documents from a .jsonl.gz corpus file; a clear error if it is absent or unreadable."""
    fields = {f.name for f in dataclasses.fields(Document)}
    documents = []
    for number, record in enumerate(paths.read_jsonl_gz(path, rebuild), 1):
        if set(record) != fields:
            raise paths.corrupt(
                path, f"record {number} has fields {sorted(record)}, expected {sorted(fields)}", rebuild
            )
        documents.append(Document(**record))
    return documents


def load_corpus(name: str = EMBEDDED_CORPUS, data_dir=None, verify: bool = True) -> list[Document]:
    """The documents of corpus `name` ("shakespeare" ships; "mixed" must be built first).

    verify: check the files against SHA256SUMS first (a few ms per MB).
    Raises MissingDataError / CorruptDataError naming the command that rebuilds the corpus.
    """
    directory = corpus_dir(name, data_dir)
    rebuild = rebuild_command(name, data_dir)
    if verify:
        paths.verify_checksums(directory, rebuild)
    return read_documents(directory / f"{name}.jsonl.gz", rebuild)


def load_embedded_corpus() -> list[Document]:
    """The corpus that ships in the repository: Shakespeare's 42 works, one document each."""
    return load_corpus(EMBEDDED_CORPUS)


def embedded_corpus_provenance() -> str:
    """PROVENANCE.md of the embedded corpus: its source package, files and licence."""
    path = corpus_dir(EMBEDDED_CORPUS) / "PROVENANCE.md"
    if not path.is_file():
        raise paths.missing(path, rebuild_command(EMBEDDED_CORPUS))
    return path.read_text(encoding="utf-8")


def split_documents(
    documents: Iterable[Document],
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
) -> dict[str, list[Document]]:
    """Split by document group: {"train": [...], "validation": [...]}, each sorted by doc_id.

    The round(fraction * number of groups) groups (at least one, at most all but
    one) whose SHA-256 of "<seed>:<group>" sorts first go to validation: the split
    depends only on the group names, not on the input order or the numpy version.
    """
    documents = sorted(documents, key=lambda d: d.doc_id)
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    groups = sorted({d.group for d in documents})
    if len(groups) < 2:
        raise ValueError(f"documents: need at least 2 groups to split, got {len(groups)}")
    n_val = min(max(1, round(validation_fraction * len(groups))), len(groups) - 1)
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{_SPLIT_SEED}:{g}".encode()).hexdigest())
    held_out = set(ranked[:n_val])
    return {
        "train": [d for d in documents if d.group not in held_out],
        "validation": [d for d in documents if d.group in held_out],
    }
