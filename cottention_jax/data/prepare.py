"""Prepare a text source once: split it, pick or train the tokenizer, tokenize it into ArrayRecord.

    prepared = prepare_text("notes/*.md", tokenizer="bpe", vocab_size=4096)
    prepared.folder          <data_dir>/prepared/text-<fingerprint[:16]>/
    prepared.tokenizer       the tokenizer every token id was made with (also tokenizer.json there)
    prepared.num_tokens("train"), prepared.shards("validation"), prepared.meta

Layout of a prepared folder (meta.json written last: see `cache.py`):

    <split>-<k>.array_record   the split's token stream in records of RECORD_TOKENS tokens
                               (uint16 when the vocabulary fits, else int32, little-endian);
                               documents in source order, each followed by the separator
                               token (eos, or sep for a tokenizer without eos)
    tokenizer.json, meta.json

The split is by document group (`documents.Piece.group`): the round(fraction * groups) groups
(at least one, at most all but one) whose SHA-256 of "<seed>:<group>" sorts first are the
validation split, as `corpus.split_documents` does for the built-in corpora; a TFDS dataset
with its own validation or test split keeps it. A tokenizer of a kind ("bpe", "wordpiece") is
the shipped one of a built-in corpus, else trained from the train split's text (its first
TOKENIZER_TRAIN_BYTES) and cached beside the prepared data. Nothing holds the corpus in memory:
every pass streams the source, and tokenization goes in batches of about BATCH_BYTES.

The folder is keyed by a fingerprint of the source (`TextSource.fingerprint`), the text field,
the split fraction and the tokenizer's JSON: a change to any of them prepares anew; the same
ones reuse it, also from another process running at the same time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cottention_jax.data import cache, paths, tokenization
from cottention_jax.data.corpus import DEFAULT_VALIDATION_FRACTION
from cottention_jax.data.documents import DataSourceError, Piece, TextSource, open_source

__all__ = [
    "BATCH_BYTES",
    "RECORD_TOKENS",
    "TOKENIZER_TRAIN_BYTES",
    "PreparedText",
    "open_prepared",
    "prepare_text",
    "resolve_tokenizer",
]

FORMAT_VERSION = 1
RECORD_TOKENS = 4096  # tokens per ArrayRecord record (8 or 16 KiB)
SHARD_RECORDS = 16384  # records per shard file (64M tokens)
BATCH_BYTES = 4 << 20  # text tokenized per encode_batch call
TOKENIZER_TRAIN_BYTES = 100 << 20  # text a tokenizer is trained on, at most
_SPLIT_SEED = 20240926  # the built-in corpora's split seed (corpus.py)


@dataclasses.dataclass(frozen=True)
class PreparedText:
    """A tokenized corpus on disk (see the module docstring)."""

    folder: Path
    meta: dict
    tokenizer: tokenization.Tokenizer

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.meta["splits"])

    def num_tokens(self, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"])

    def num_documents(self, split: str) -> int:
        return int(self.meta["splits"][split]["documents"])

    def shards(self, split: str) -> list[str]:
        return [str(self.folder / name) for name in self.meta["splits"][split]["shards"]]

    @property
    def separator_id(self) -> int:
        return int(self.meta["separator_id"])

    def describe(self) -> str:
        parts = [f"{s} {self.num_documents(s):,} documents / {self.num_tokens(s):,} tokens" for s in self.splits]
        return f"{self.meta['corpus']} ({'; '.join(parts)})"


# ----------------------------------------------------------------------------- the split


def _group_hash(group: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{_SPLIT_SEED}:{group}".encode()).digest()[:8], "big")


def split_rule(source: TextSource, fraction: float) -> Callable[[Piece], str]:
    """piece -> "train" | "validation": a pass over the group names (no text kept) fixes the
    validation groups; a piece whose source fixes its split keeps it."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in (0, 1); got {fraction!r}")
    hashes, fixed = [], False
    for piece in source.pieces():
        if piece.split is not None:
            fixed = True
            break
        hashes.append(_group_hash(piece.group))
    if fixed:
        return lambda piece: "train" if piece.split == "train" else "validation"
    groups = np.unique(np.asarray(hashes, np.uint64))
    if len(groups) < 2:
        raise DataSourceError(
            f"data.corpus: {source.name} holds {len(groups)} document(s); a train and a "
            "validation split need at least 2 (add text, or files)"
        )
    n_val = min(max(1, round(fraction * len(groups))), len(groups) - 1)
    threshold = int(groups[n_val - 1])
    return lambda piece: "validation" if _group_hash(piece.group) <= threshold else "train"


# ----------------------------------------------------------------------------- the tokenizer


def _train_texts(source: TextSource, rule, limit: int) -> Iterator[str]:
    seen = 0
    for piece in source.pieces():
        if rule(piece) == "train":
            yield piece.text
            seen += len(piece.text)
            if seen >= limit:
                return


def resolve_tokenizer(
    source: TextSource,
    tokenizer: str,
    vocab_size: int | None,
    fraction: float,
    data_dir=None,
    log: Callable[[str], None] = print,
    build: bool = True,
) -> tokenization.Tokenizer:
    """data.tokenizer made concrete: a tokenizer.json path, the byte tokenizer, a built-in corpus's
    shipped (or cached) one, or one trained on this source's train split and cached (build=False:
    MissingDataError instead of training)."""
    if tokenizer not in tokenization.KINDS:
        return tokenization.load_tokenizer(tokenizer)
    if tokenizer == "byte":  # one size: a preset's vocab_size for bpe does not apply
        return tokenization.ByteTokenizer()
    if source.builtin:
        return tokenization.get_tokenizer(tokenizer, source.builtin, vocab_size, data_dir)
    vocab_size = tokenization.DEFAULT_VOCAB_SIZE[tokenizer] if vocab_size is None else int(vocab_size)
    key = hashlib.sha256(f"{source.fingerprint()}:{fraction}".encode()).hexdigest()[:16]
    cached = paths.resolve_data_dir(data_dir) / "tokenizers" / f"{key}-{tokenizer}-{vocab_size}.json"
    if cached.is_file():
        return tokenization.load_tokenizer(cached)
    if not build:
        raise paths.MissingDataError(
            f"{source.name} is not prepared (its {tokenizer} tokenizer is not trained): "
            + prepare_command(source.name, tokenizer, vocab_size, fraction)
        )
    log(f"training a {tokenizer} tokenizer ({vocab_size} tokens) on the train split of {source.name}")
    rule = split_rule(source, fraction)
    trained = tokenization.train_tokenizer(tokenizer, _train_texts(source, rule, TOKENIZER_TRAIN_BYTES), vocab_size)
    trained.save(cached)
    return trained


def prepare_command(corpus: str, tokenizer: str, vocab_size: int | None, fraction: float) -> str:
    """The `cottention-data prepare` command line that prepares these settings (every value quoted)."""
    words = ["cottention-data", "prepare", corpus, "--tokenizer", tokenizer]
    if vocab_size is not None and tokenizer in ("bpe", "wordpiece"):
        words += ["--vocab-size", str(vocab_size)]
    if fraction != DEFAULT_VALIDATION_FRACTION:
        words += ["--validation-fraction", str(fraction)]
    return shlex.join(words)


def _separator(tok: tokenization.Tokenizer) -> int:
    for role in ("eos", "sep"):
        if tok.special_ids.get(role) is not None:
            return int(tok.special_ids[role])
    raise DataSourceError(
        f"data.tokenizer: the {tok.kind} tokenizer has neither an end-of-sequence nor a "
        "separator token to put between documents"
    )


# ----------------------------------------------------------------------------- writing


class _StreamWriter:
    """One split's token stream as fixed-size ArrayRecord records, in shards."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.buffer = np.empty(0, dtype)
        self.shards: list[str] = []
        self.records_in_shard = SHARD_RECORDS
        self.writer: Any = None  # the open shard's ArrayRecordWriter (array_record has no type stubs)
        self.tokens = self.documents = 0
        self.open_document = False  # the last piece written did not end its document

    def _emit(self, record: np.ndarray) -> None:
        from array_record.python import array_record_module  # noqa: PLC0415

        if self.records_in_shard == SHARD_RECORDS:
            if self.writer is not None:
                self.writer.close()
            name = f"{self.split}-{len(self.shards):05d}.array_record"
            self.writer = array_record_module.ArrayRecordWriter(str(self.folder / name), "group_size:1,uncompressed")
            self.shards.append(name)
            self.records_in_shard = 0
        self.writer.write(record.astype("<" + self.dtype.str[1:]).tobytes())
        self.records_in_shard += 1

    def add(self, ids: np.ndarray) -> None:
        self.tokens += len(ids)
        self.buffer = np.concatenate([self.buffer, ids.astype(self.dtype)])
        full = len(self.buffer) // RECORD_TOKENS * RECORD_TOKENS
        for start in range(0, full, RECORD_TOKENS):
            self._emit(self.buffer[start : start + RECORD_TOKENS])
        self.buffer = self.buffer[full:]

    def close(self) -> dict:
        if len(self.buffer):
            self._emit(self.buffer)
        if self.writer is not None:
            self.writer.close()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}


def _piece_batches(source: TextSource) -> Iterator[list[Piece]]:
    batch, size = [], 0
    for piece in source.pieces():
        batch.append(piece)
        size += len(piece.text)
        if size >= BATCH_BYTES or len(batch) >= 4096:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize_into(folder: Path, source: TextSource, tok: tokenization.Tokenizer, rule, progress: bool) -> dict:
    """Stream the source through the tokenizer into the split writers; returns the splits' stats."""
    from tqdm import tqdm  # noqa: PLC0415

    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.int32)
    separator = np.asarray([_separator(tok)], dtype)
    writers: dict[str, _StreamWriter] = {}
    bar = tqdm(desc=f"tokenizing {source.name}", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True)
    start, text_bytes, tokens = time.perf_counter(), 0, 0
    last_group: dict[str, str] = {}
    for batch in _piece_batches(source):
        encoded = tok.encode_batch([p.text for p in batch])
        for piece, ids in zip(batch, encoded, strict=True):
            split = rule(piece)
            w = writers.get(split) or writers.setdefault(split, _StreamWriter(folder, split, dtype))
            continues = w.open_document and _continues(last_group.get(split), piece.group)
            if w.open_document and not continues:  # its document's next piece went elsewhere
                w.add(separator)
            w.add(np.asarray(ids, dtype))
            if piece.ends:
                w.add(separator)
            w.documents += int(not continues)  # the first piece of a document in this split
            w.open_document, last_group[split] = not piece.ends, piece.group
            tokens += len(ids)
        size = sum(len(p.text.encode("utf-8")) for p in batch)
        text_bytes += size
        bar.update(size)
        bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s")
    bar.close()
    for w in writers.values():
        if w.open_document:
            w.add(separator)
    splits = {name: w.close() for name, w in sorted(writers.items())}
    if set(splits) != {"train", "validation"}:
        raise DataSourceError(f"data.corpus: {source.name} gave only a {'/'.join(splits) or 'no'} split")
    return {
        "splits": splits,
        "dtype": dtype.name,
        "separator_id": int(separator[0]),
        "text_bytes": text_bytes,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _continues(previous: str | None, group: str) -> bool:
    """Whether text piece `group` ("<file>#k") directly follows `previous` ("<file>#k-1")."""
    if previous is None or "#" not in group or "#" not in previous:
        return False
    (file_a, k_a), (file_b, k_b) = previous.rsplit("#", 1), group.rsplit("#", 1)
    return file_a == file_b and k_a.isdigit() and k_b.isdigit() and int(k_b) == int(k_a) + 1


# ----------------------------------------------------------------------------- the entry points


def open_prepared(folder) -> PreparedText:
    """A prepared folder read back (its tokenizer from its tokenizer.json)."""
    folder = Path(folder)
    meta = cache.read_meta(folder)
    return PreparedText(folder=folder, meta=meta, tokenizer=tokenization.load_tokenizer(folder / "tokenizer.json"))


def prepare_text(
    corpus: str,
    *,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    text_field: str = "text",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    data_dir=None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    build: bool = True,
) -> PreparedText:
    """The prepared (tokenized) form of `corpus` (a data.corpus value), made on first use
    (build=False: MissingDataError naming the command that prepares it).

    Raises MissingDataError for a path or TFDS dataset that is absent and DataSourceError for a
    file that is not readable text, each one line naming the file; writes nothing then.
    """
    source = open_source(corpus, text_field=text_field, data_dir=data_dir)
    tok = resolve_tokenizer(source, tokenizer, vocab_size, validation_fraction, data_dir, log, build)
    tok_json = tok.to_json()
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "record_tokens": RECORD_TOKENS,
                "source": source.fingerprint(),
                "fraction": validation_fraction,
                "tokenizer": hashlib.sha256(tok_json.encode()).hexdigest(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()

    folder = cache.find_prepared(data_dir, "text", fingerprint)
    if folder is None and not build:
        raise paths.MissingDataError(
            f"{source.name} is not prepared with this tokenizer and split: "
            + prepare_command(source.name, tokenizer, vocab_size, validation_fraction)
        )
    if folder is None:
        rule = split_rule(source, validation_fraction)  # reads the whole source once: bad files fail here,

        # before anything is written to the data dir
        def make(tmp: Path) -> None:
            stats = _tokenize_into(tmp, source, tok, rule, progress)
            (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
            cache.write_meta(
                tmp,
                {
                    "format": FORMAT_VERSION,
                    "corpus": source.name,
                    "text_field": text_field,
                    "validation_fraction": validation_fraction,
                    "fingerprint": fingerprint,
                    "record_tokens": RECORD_TOKENS,
                    "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size},
                    **stats,
                },
            )

        folder = cache.prepared_folder(data_dir, "text", fingerprint, make)
    return PreparedText(folder=folder, meta=cache.read_meta(folder), tokenizer=tok)
