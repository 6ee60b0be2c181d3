"""What `data.corpus` and `data.tokenizer` may name, checked when a config is built.

data.corpus, one of:
    shakespeare | mixed                   the built-in corpora (mixed: `cottention-data build-mixed`)
    tfds:NAME[/CONFIG][:SPLIT]            a TFDS dataset prepared in the TFDS data dir
    PATH                                  a .txt/.md file, a .jsonl/.jsonl.gz file, a .parquet file,
                                          a directory of such files, or a glob of them
data.tokenizer, one of:
    bpe | wordpiece | byte                trained on the corpus's train split (shipped for the built-ins)
    PATH/tokenizer.json                   any Hugging Face `tokenizers` file

Only the form is checked here: a saved config must still load where its files are absent
(`load_model` on another machine). Whether the files exist is checked when the data is
prepared, before anything is written.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

__all__ = ["BUILTIN_CORPORA", "TEXT_SUFFIXES", "CorpusSpec", "check_tokenizer_spec", "parse_corpus"]

BUILTIN_CORPORA = ("shakespeare", "mixed")
TOKENIZER_KINDS = ("bpe", "wordpiece", "byte")
# suffix -> reader of `documents.py`
TEXT_SUFFIXES = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".parquet": "parquet"}
# A TFDS split: names, each optionally sliced ("train[:10%]"), joined by "+"; a colon only in a slice.
_SPLIT = r"[A-Za-z0-9_]+(?:\[[A-Za-z0-9_:%\-]*\])?"
_TFDS = re.compile(
    rf"tfds:(?P<name>[A-Za-z0-9_]+)(?:/(?P<config>[A-Za-z0-9_.\-]+))?"
    rf"(?::(?P<split>{_SPLIT}(?:\+{_SPLIT})*))?"
)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A parsed data.corpus: kind "builtin" (name), "tfds" (name, config, split) or "files" (path)."""

    kind: str
    name: str = ""
    config: str | None = None
    split: str | None = None
    path: str = ""

    @property
    def tfds_name(self) -> str:
        return self.name + (f"/{self.config}" if self.config else "")


def suffix_kind(path: str) -> str | None:
    """ "text", "jsonl" or "parquet" for a file name, None for another suffix."""
    lower = path.lower()
    return next((kind for suffix, kind in TEXT_SUFFIXES.items() if lower.endswith(suffix)), None)


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or glob.has_magic(value)
        or suffix_kind(value) is not None
        or os.path.exists(value)
    )


def parse_corpus(value) -> CorpusSpec:
    """Parse data.corpus; ValueError naming the field when it is none of the accepted forms."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"data.corpus must be a built-in corpus {BUILTIN_CORPORA}, tfds:NAME[/CONFIG][:SPLIT] "
            f"or a path; got {value!r}"
        )
    if value in BUILTIN_CORPORA:
        return CorpusSpec("builtin", name=value)
    if value.startswith("tfds:"):
        match = _TFDS.fullmatch(value)
        if not match:
            raise ValueError(
                f"data.corpus {value!r} is not of the form tfds:NAME[/CONFIG][:SPLIT] "
                "(e.g. tfds:wikitext/wikitext-103-raw-v1 or tfds:lm1b:train)"
            )
        return CorpusSpec("tfds", name=match["name"], config=match["config"], split=match["split"])
    if not _looks_like_path(value):
        raise ValueError(
            f"data.corpus must be a built-in corpus {BUILTIN_CORPORA}, tfds:NAME[/CONFIG][:SPLIT] "
            f"or a path to .txt/.md/.jsonl/.jsonl.gz/.parquet files; got {value!r}, which is none "
            "of these (no such file or directory)"
        )
    # A file of another type is refused; a path that is absent here and names no file type may be a
    # directory on the machine the config came from (only the form is checked: see the docstring).
    other_type = os.path.isfile(value) or (not os.path.exists(value) and os.path.splitext(value)[1] != "")
    if other_type and not glob.has_magic(value) and suffix_kind(value) is None:
        raise ValueError(
            f"data.corpus {value!r}: unsupported file type; use .txt, .md, .jsonl, .jsonl.gz or "
            ".parquet (or a directory of them)"
        )
    return CorpusSpec("files", path=value)


def check_tokenizer_spec(value) -> None:
    """data.tokenizer: a kind or a path to a tokenizer .json file; ValueError naming the field."""
    if value in TOKENIZER_KINDS:
        return
    if not isinstance(value, str) or not value.lower().endswith(".json"):
        raise ValueError(
            f"data.tokenizer must be one of {TOKENIZER_KINDS} or a path to a Hugging Face "
            f"tokenizer .json file; got {value!r}"
        )
