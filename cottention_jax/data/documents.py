"""Text sources: every kind of `data.corpus` as one stream of document pieces, read lazily.

A source yields `Piece`s in a fixed order, never holding more than one file block or one
batch of records in memory:

    builtin   shakespeare / mixed: one piece per document (its `group` keeps related
              documents, e.g. one Bible book in two translations, in one split)
    text      .txt / .md: a file is one document, read in pieces of at most 1 MiB cut at a
              line break (smaller for small corpora, so that even one file can be split)
    jsonl     .jsonl / .jsonl.gz: one document per line, its text in field `text_field`
    parquet   .parquet (pyarrow): one document per row, column `text_field`
    tfds      a prepared TFDS dataset read with `tfds.data_source` (no TensorFlow, no download)

Every problem with a user's files is one line naming the file (and line): `MissingDataError`
for what is absent, `DataSourceError` (a ValueError) for what is unreadable.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from cottention_jax.data import corpus as corpus_lib
from cottention_jax.data import paths, tfds_catalog
from cottention_jax.data.spec import CorpusSpec, parse_corpus, suffix_kind

__all__ = ["DataSourceError", "Piece", "TextSource", "open_source"]

_MAX_PIECE_BYTES = 1 << 20
_MIN_PIECE_BYTES = 4 << 10
_PIECES_PER_SMALL_CORPUS = 64
_TFDS_READ = 1024  # records fetched per data-source call


class DataSourceError(ValueError):
    """A user's data cannot be read as text (the message is one line naming the file and the fault)."""


@dataclasses.dataclass(frozen=True)
class Piece:
    """A document, or a piece of one. `group`: pieces of one group share a split; `ends`: the last
    piece of its document (a separator token follows it); `split`: fixed by the source, or None."""

    group: str
    text: str
    ends: bool = True
    split: str | None = None


class TextSource:
    """A `data.corpus` value made readable: `pieces()` streams it, `fingerprint()` identifies it."""

    def __init__(self, spec: CorpusSpec, text_field: str = "text", data_dir=None):
        self.spec, self.text_field, self.data_dir = spec, text_field, data_dir
        if spec.kind == "files":
            self.files = _expand_files(spec.path)
            sizes = sum(os.path.getsize(f) for f in self.files)
            self.piece_bytes = int(min(_MAX_PIECE_BYTES, max(_MIN_PIECE_BYTES, sizes // _PIECES_PER_SMALL_CORPUS)))
        elif spec.kind == "tfds":
            self.tfds_splits = _open_tfds(spec)
            self._check_tfds_field()

    @property
    def name(self) -> str:
        return {"builtin": self.spec.name, "tfds": f"tfds:{self.spec.tfds_name}", "files": self.spec.path}[
            self.spec.kind
        ]

    @property
    def builtin(self) -> str | None:
        return self.spec.name if self.spec.kind == "builtin" else None

    def fingerprint(self) -> str:
        """SHA-256 of what the source reads: file names, sizes and modification times; the built-in
        corpus's checksum; the TFDS dataset's name, version and split sizes."""
        h = hashlib.sha256(json.dumps([self.spec.kind, self.text_field]).encode())
        if self.spec.kind == "builtin":
            directory = corpus_lib.corpus_dir(self.spec.name, self.data_dir)
            rebuild = corpus_lib.rebuild_command(self.spec.name, self.data_dir)
            h.update(paths.read_checksums(directory, rebuild)[f"{self.spec.name}.jsonl.gz"].encode())
        elif self.spec.kind == "files":
            for f in self.files:
                st = os.stat(f)
                h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            for split, source in sorted(self.tfds_splits.items()):
                info = source.dataset_info
                h.update(f"{info.full_name}\0{split}\0{len(source)}\n".encode())
        return h.hexdigest()

    def pieces(self) -> Iterator[Piece]:
        """Every piece of the source, in a fixed order."""
        if self.spec.kind == "builtin":
            for d in corpus_lib.load_corpus(self.spec.name, self.data_dir):
                yield Piece(group=d.group, text=d.text)
        elif self.spec.kind == "tfds":
            yield from self._tfds_pieces()
        else:
            for f in self.files:
                kind = suffix_kind(f)
                assert kind is not None  # parse_corpus and _expand_files let only supported files through
                reader = {"text": self._text_pieces, "jsonl": self._jsonl_pieces, "parquet": self._parquet_pieces}[kind]
                yield from reader(f)

    # ---------------------------------------------------------------- files

    def _text_pieces(self, path: str) -> Iterator[Piece]:
        """The file in pieces of about piece_bytes, each cut after a newline; the last one `ends`."""
        pending, k, offset = None, 0, 0
        for raw in _text_blocks(path, self.piece_bytes):
            text = _decode(raw, path, offset)
            offset += len(raw)
            if pending is not None:
                yield Piece(group=f"{path}#{k - 1}", text=pending, ends=False)
            pending, k = text, k + 1
        if pending is None or (k == 1 and not pending.strip()):
            raise DataSourceError(f"data.corpus: {path} is empty")
        yield Piece(group=f"{path}#{k - 1}", text=pending, ends=True)

    def _jsonl_pieces(self, path: str) -> Iterator[Piece]:
        opener = gzip.open if path.lower().endswith(".gz") else open
        count = 0
        try:
            with opener(path, "rb") as f:
                for number, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    line = _decode(raw, path, None, line=number)
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataSourceError(f"data.corpus: {path} line {number} is not JSON ({err.msg})") from None
                    yield Piece(group=f"{path}:{number}", text=self._field(record, path, f"line {number}"))
                    count += 1
        except (OSError, EOFError) as err:  # a .gz that is not gzip, or truncated
            raise DataSourceError(f"data.corpus: {path} cannot be read: {err}") from None
        if count == 0:
            raise DataSourceError(f"data.corpus: {path} holds no JSON line")

    def _parquet_pieces(self, path: str) -> Iterator[Piece]:
        try:
            import pyarrow.parquet as pq  # noqa: PLC0415  (optional)
        except ImportError:
            raise DataSourceError(
                f'data.corpus: reading {path} needs pyarrow: pip install "cottention-jax[parquet]"'
            ) from None
        try:
            table = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises ArrowInvalid for a file that is not parquet
            raise DataSourceError(f"data.corpus: {path} is not a parquet file ({err})") from None
        columns = table.schema_arrow.names
        if self.text_field not in columns:
            raise DataSourceError(
                f"data.corpus: {path} has no column {self.text_field!r} "
                f"(columns: {', '.join(columns)}); set data.text_field"
            )
        row = 0
        for batch in table.iter_batches(batch_size=1024, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if not isinstance(text, str):
                    raise DataSourceError(
                        f"data.corpus: {path} row {row}: column {self.text_field!r} is {type(text).__name__}, not text"
                    )
                yield Piece(group=f"{path}:{row}", text=text)
        if row == 0:
            raise DataSourceError(f"data.corpus: {path} holds no row")

    def _field(self, record, path: str, where: str) -> str:
        if not isinstance(record, dict) or self.text_field not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataSourceError(
                f"data.corpus: {path} {where} has no field {self.text_field!r} (found {found}); set data.text_field"
            )
        text = record[self.text_field]
        if not isinstance(text, str):
            raise DataSourceError(
                f"data.corpus: {path} {where}: field {self.text_field!r} is {type(text).__name__}, not text"
            )
        return text

    # ---------------------------------------------------------------- TFDS

    def _check_tfds_field(self) -> None:
        source = next(iter(self.tfds_splits.values()))
        features = list(source.dataset_info.features.keys())
        if self.text_field not in features:
            raise DataSourceError(
                f"data.corpus: tfds:{self.spec.tfds_name} has no feature {self.text_field!r} "
                f"(features: {', '.join(features)}); set data.text_field"
            )

    def _tfds_pieces(self) -> Iterator[Piece]:
        fixed = len(self.tfds_splits) > 1  # the dataset's own train / validation splits
        for split, source in self.tfds_splits.items():
            for start in range(0, len(source), _TFDS_READ):
                indices = list(range(start, min(start + _TFDS_READ, len(source))))
                for i, record in zip(indices, _read(source, indices), strict=True):
                    text = record[self.text_field]
                    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
                    yield Piece(group=f"{split}:{i}", text=text, split=split if fixed else None)


def _text_blocks(path: str, size: int) -> Iterator[bytes]:
    """Consecutive byte blocks of a file, each about `size` bytes and ending after a newline where
    the block has one (else at a UTF-8 character boundary), together the whole file."""
    buffer = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(size)
            buffer += block
            if not block:
                if buffer:
                    yield buffer
                return
            if len(buffer) < size:
                continue
            cut = buffer.rfind(b"\n") + 1
            if cut == 0:  # no newline in the block: cut between characters
                cut = len(buffer) - 1
                while cut > 0 and buffer[cut] & 0xC0 == 0x80:  # a continuation byte of UTF-8
                    cut -= 1
                cut = cut or len(buffer)
            yield buffer[:cut]
            buffer = buffer[cut:]


def _decode(raw: bytes, path: str, offset: int | None, line: int | None = None) -> str:
    where = f"line {line}" if line is not None else f"byte {offset}"
    if b"\0" in raw:
        raise DataSourceError(f"data.corpus: {path} is not a text file (a NUL byte near {where})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        at = f"line {line}" if line is not None else f"byte {(offset or 0) + err.start}"
        raise DataSourceError(f"data.corpus: {path} is not UTF-8 text (invalid byte at {at})") from None


def _expand_files(path: str) -> list[str]:
    """The readable files a path names: itself, the supported files under a directory, or a glob's."""
    if glob.has_magic(path):
        found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(path):
        found = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    elif os.path.isfile(path):
        return [path]
    else:
        raise paths.MissingDataError(f"data.corpus: {path} does not exist")
    supported = [p for p in found if suffix_kind(p) is not None]
    if not supported:
        raise paths.MissingDataError(
            f"data.corpus: {path} names no .txt/.md/.jsonl/.jsonl.gz/.parquet file ({len(found)} other file(s))"
        )
    return supported


def _read(source, indices: list[int]) -> list:
    """Records of a TFDS data source, in one batched read where the source has one (a mocked one does not)."""
    try:
        return source.__getitems__(indices)
    except (AttributeError, TypeError):
        return [source[i] for i in indices]


def _open_tfds(spec: CorpusSpec) -> dict:
    """{split: data source}: the one split named, else train plus validation (or else test) when present.

    Splits are opened one by one (a prepared dataset lists its splits; a mocked one does not)."""
    tfds = tfds_catalog.import_builder(spec.name)
    where = str(tfds_catalog.data_dir())

    def open_split(split: str):
        return tfds.data_source(spec.tfds_name, split=split, data_dir=where, download=False)

    try:
        if spec.split is not None:
            return {spec.split: open_split(spec.split)}
        sources = {"train": open_split("train")}
    except Exception as err:  # noqa: BLE001  (TFDS raises several types for "not found / not prepared")
        raise tfds_catalog.not_prepared(spec.tfds_name, type(err).__name__) from None
    for held_out in ("validation", "test"):
        try:
            sources["validation"] = open_split(held_out)
            break
        except Exception:  # noqa: BLE001  (the dataset has no such split)
            continue
    return sources


def open_source(corpus: str, text_field: str = "text", data_dir=None) -> TextSource:
    """The TextSource of a data.corpus value (MissingDataError / DataSourceError when unreadable)."""
    return TextSource(parse_corpus(corpus), text_field=text_field, data_dir=data_dir)
