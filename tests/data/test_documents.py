"""Text sources (documents.py) and the data.corpus / data.tokenizer forms (spec.py), on files written here.

Every source kind is read back against the files it was made from; every kind of bad input must
end in one line naming the file (and line). TFDS is exercised with `tfds.testing.mock_data` and an
empty TFDS data dir, with sockets refused, so nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from pathlib import Path

import pytest

from cottention_jax.configs import DataConfig
from cottention_jax.data import corpus as corpus_lib
from cottention_jax.data import paths
from cottention_jax.data.documents import DataSourceError, open_source
from cottention_jax.data.spec import check_tokenizer_spec, parse_corpus
from tests.data._fixtures import fresh_rng, mock_lm1b, random_prose, write_text_files
from tests.data._fixtures import offline_tfds as fixtures_offline_tfds

_MULTIBYTE = ["a", "b", " ", "é", "ß", "世", "界", "🙂", "ж", "\u0301"]


def _one_line(err: BaseException, *names: str) -> str:
    message = str(err)
    assert "\n" not in message, message
    for name in names:
        assert name in message, (name, message)
    return message


def _text_of(pieces, path) -> str:
    return "".join(p.text for p in pieces if p.group.rsplit("#", 1)[0] == str(path))


def _check_file_pieces(pieces, path: Path) -> None:
    """The pieces of one text file: in order, cut after newlines where the file has them, the whole file."""
    own = [p for p in pieces if p.group.rsplit("#", 1)[0] == str(path)]
    text = path.read_text(encoding="utf-8")
    assert "".join(p.text for p in own) == text
    assert [p.group for p in own] == [f"{path}#{k}" for k in range(len(own))]
    assert [p.ends for p in own] == [False] * (len(own) - 1) + [True]
    assert all(p.split is None for p in own)
    for p in own[:-1]:
        if "\n" in p.text:  # a block with a line break is cut after its last one
            assert p.text.endswith("\n")


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".txt", ".md"])
def test_text_file_is_one_document_in_pieces_cut_at_newlines(tmp_path, suffix):
    rng = fresh_rng()
    path = tmp_path / f"book{suffix}"
    path.write_text(random_prose(rng, int(rng.integers(500, 900))), encoding="utf-8")  # ~30-60 KB
    source = open_source(str(path))
    pieces = list(source.pieces())
    assert len(pieces) > 3  # a small corpus is still cut into several pieces
    _check_file_pieces(pieces, path)
    assert all(len(p.text.encode()) <= 2 * source.piece_bytes for p in pieces)
    assert source.name == str(path)


def test_long_line_of_multibyte_characters_round_trips(tmp_path):
    rng = fresh_rng()
    line = "".join(rng.choice(_MULTIBYTE, size=int(rng.integers(15_000, 25_000))))  # no newline at all
    tail = random_prose(rng, 200)
    path = tmp_path / "wide.txt"
    path.write_text(line + tail + line[:3000], encoding="utf-8")
    pieces = list(open_source(str(path)).pieces())
    assert len(pieces) > 4
    assert "".join(p.text for p in pieces) == path.read_text(encoding="utf-8")
    assert [p.ends for p in pieces] == [False] * (len(pieces) - 1) + [True]
    # No character was cut in two: every piece is whole UTF-8 on its own.
    assert b"".join(p.text.encode() for p in pieces) == path.read_bytes()


def test_directory_is_read_sorted_and_recursive_ignoring_other_files(tmp_path):
    rng = fresh_rng()
    root = tmp_path / "corpus"
    written = write_text_files(root, rng, ["b.txt", "a.md", "sub/z.txt", "sub/deeper/c.TXT", "A.txt"])
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / "sub" / "script.py").write_text("print(1)\n")
    (root / "sub" / "archive.gz").write_bytes(gzip.compress(b"not a corpus file"))
    with (root / "sub" / "docs.jsonl").open("w") as f:
        for i in range(3):
            f.write(json.dumps({"text": random_prose(rng, 2), "id": i}) + "\n")
    source = open_source(str(root))
    expected_files = sorted([*map(str, written), str(root / "sub" / "docs.jsonl")])
    assert source.files == expected_files
    pieces = list(source.pieces())
    order = [p.group.rsplit("#", 1)[0] if "#" in p.group else p.group.rsplit(":", 1)[0] for p in pieces]
    assert list(dict.fromkeys(order)) == expected_files  # file by file, in sorted order
    for path in written:
        _check_file_pieces(pieces, path)
    lines = (root / "sub" / "docs.jsonl").read_text().splitlines()
    assert [p.text for p in pieces if p.group.startswith(str(root / "sub" / "docs.jsonl"))] == [
        json.loads(line)["text"] for line in lines
    ]


def test_glob_names_the_matching_files(tmp_path):
    rng = fresh_rng()
    written = write_text_files(tmp_path, rng, ["x1.md", "x2.md", "x3.txt", "deep/x4.md"])
    source = open_source(str(tmp_path / "*.md"))
    assert source.files == [str(tmp_path / "x1.md"), str(tmp_path / "x2.md")]
    pieces = list(source.pieces())
    for path in written[:2]:
        _check_file_pieces(pieces, path)
    assert open_source(str(tmp_path / "**" / "*.md")).files == sorted(
        [str(tmp_path / "x1.md"), str(tmp_path / "x2.md"), str(tmp_path / "deep" / "x4.md")]
    )


@pytest.mark.parametrize("gz", [False, True], ids=["jsonl", "jsonl.gz"])
def test_jsonl_is_one_document_per_line(tmp_path, gz):
    rng = fresh_rng()
    records = [{"body": random_prose(rng, int(rng.integers(1, 6))), "n": i, "tags": ["x"] * i} for i in range(9)]
    lines = [json.dumps(r) for r in records]
    lines.insert(4, "   ")  # a blank line is skipped, still counted
    raw = ("\n".join(lines) + "\n").encode()
    path = tmp_path / ("docs.jsonl.gz" if gz else "docs.jsonl")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    pieces = list(open_source(str(path), text_field="body").pieces())
    assert [p.text for p in pieces] == [r["body"] for r in records]
    numbers = [n for n in range(1, 11) if n != 5]
    assert [p.group for p in pieces] == [f"{path}:{n}" for n in numbers]  # one group per document
    assert all(p.ends and p.split is None for p in pieces)


def _write_parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=7)


def test_parquet_is_one_document_per_row(tmp_path):
    rng = fresh_rng()
    texts = [random_prose(rng, int(rng.integers(1, 5))) for _ in range(2500)]  # several batches of rows
    path = tmp_path / "docs.parquet"
    _write_parquet(path, {"id": list(range(len(texts))), "content": texts})
    pieces = list(open_source(str(path), text_field="content").pieces())
    assert [p.text for p in pieces] == texts
    assert [p.group for p in pieces] == [f"{path}:{i}" for i in range(1, len(texts) + 1)]
    assert all(p.ends for p in pieces)


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "docs.parquet"
    _write_parquet(path, {"text": ["one", "two"]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow...` raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataSourceError) as caught:
        list(open_source(str(path)).pieces())
    _one_line(caught.value, str(path), "cottention-jax[parquet]")


def test_builtin_shakespeare_yields_its_42_documents():
    source = open_source("shakespeare")
    pieces = list(source.pieces())
    docs = corpus_lib.load_embedded_corpus()
    assert len(pieces) == len(docs) == 42
    assert [p.text for p in pieces] == [d.text for d in docs]
    assert [p.group for p in pieces] == [d.group for d in docs]
    assert all(p.ends and p.split is None for p in pieces)
    assert source.builtin == "shakespeare" and source.fingerprint() == open_source("shakespeare").fingerprint()


def test_fingerprint_follows_names_sizes_and_times_of_files(tmp_path):
    rng = fresh_rng()
    a, b = write_text_files(tmp_path, rng, ["a.txt", "b.txt"])
    first = open_source(str(tmp_path)).fingerprint()
    assert open_source(str(tmp_path)).fingerprint() == first
    assert open_source(str(tmp_path), text_field="body").fingerprint() != first
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = open_source(str(tmp_path)).fingerprint()
    assert touched != first
    (tmp_path / "c.md").write_text("more\n")
    assert open_source(str(tmp_path)).fingerprint() not in (first, touched)


# ---------------------------------------------------------------- bad input


def test_missing_path_and_folders_without_text(tmp_path):
    missing = tmp_path / "nowhere" / "notes.txt"
    with pytest.raises(paths.MissingDataError) as caught:
        open_source(str(missing))
    _one_line(caught.value, str(missing), "does not exist")
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b\n")
    (folder / "README").write_text("hello\n")
    with pytest.raises(paths.MissingDataError) as caught:
        open_source(str(folder))
    _one_line(caught.value, str(folder), "2 other file(s)")
    with pytest.raises(paths.MissingDataError) as caught:
        open_source(str(tmp_path / "*.md"))
    _one_line(caught.value, str(tmp_path / "*.md"))


def _bad(path: Path, *names: str, error=DataSourceError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        list(open_source(str(path), **kwargs).pieces())
    return _one_line(caught.value, str(path), *names)


@pytest.mark.parametrize("content", ["", " \n\t\n  \n"], ids=["empty", "whitespace"])
def test_empty_text_file(tmp_path, content):
    path = tmp_path / "blank.txt"
    path.write_text(content)
    _bad(path, "is empty")
    folder = tmp_path / "dir"  # also when it is one file of several
    write_text_files(folder, fresh_rng(), ["a.txt"])
    (folder / "b.txt").write_text(content)
    _bad(folder, str(folder / "b.txt"), "is empty")


def test_binary_and_non_utf8_text_files(tmp_path):
    rng = fresh_rng()
    text = random_prose(rng, 400).encode()  # ~20 KB: several pieces
    binary = tmp_path / "image.txt"
    binary.write_bytes(text[:9000] + b"\x89PNG\x00\x00\x00\rIHDR" + text[9000:])
    _bad(binary, "is not a text file", "NUL byte")
    latin1 = tmp_path / "latin1.md"
    position = int(rng.integers(5000, len(text) - 10))
    latin1.write_bytes(text[:position] + "café".encode("latin-1") + text[position:])
    _bad(latin1, "is not UTF-8 text", f"byte {position + 3}")  # the absolute offset of the bad byte


def test_bad_jsonl_lines(tmp_path):
    rng = fresh_rng()
    good = [json.dumps({"text": random_prose(rng, 2)}) for _ in range(3)]
    cases = {
        "not_json": (good[:2] + ["", '{"text": "unterminated'], ("line 4", "is not JSON")),
        "no_field": (
            good + ['{"body": "x", "id": 3}'],
            ("line 4", "has no field 'text'", "['body', 'id']", "data.text_field"),
        ),
        "not_a_dict": (good[:1] + ['["text"]'], ("line 2", "has no field 'text'", "data.text_field")),
        "not_text": (good[:2] + ['{"text": 17}'], ("line 3", "field 'text' is int, not text")),
        "null_text": (good[:2] + ['{"text": null}'], ("line 3", "is NoneType, not text")),
    }
    for name, (lines, expected) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        _bad(path, *expected)
    invalid = tmp_path / "latin1.jsonl"
    invalid.write_bytes(("\n".join(good) + "\n").encode() + '{"text": "café"}\n'.encode("latin-1"))
    _bad(invalid, "is not UTF-8 text", "line 4")
    nul = tmp_path / "nul.jsonl"
    nul.write_bytes(b'{"text": "a"}\n{"text": "b\x00"}\n')
    _bad(nul, "is not a text file", "line 2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    _bad(empty, "holds no JSON line")


def test_jsonl_field_named_by_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    _bad(path, "line 1", "has no field 'content'", text_field="content")


def test_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    path.write_text('{"text": "plain, not compressed"}\n')
    _bad(path, "cannot be read")
    truncated = tmp_path / "cut.jsonl.gz"
    rng = fresh_rng()
    whole = gzip.compress(b"".join(json.dumps({"text": random_prose(rng, 3)}).encode() + b"\n" for _ in range(300)))
    truncated.write_bytes(whole[: len(whole) // 2])
    _bad(truncated, "cannot be read")


def test_bad_parquet(tmp_path):
    path = tmp_path / "docs.parquet"
    _write_parquet(path, {"body": ["a", "b"], "label": [0, 1]})
    _bad(path, "has no column 'text'", "body, label", "data.text_field")
    _bad(path, "row 1", "column 'label' is int", text_field="label")
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet at all\n")
    _bad(fake, "is not a parquet file")


# ---------------------------------------------------------------- spec.py and DataConfig


@pytest.mark.parametrize(
    "value, kind, fields",
    [
        ("shakespeare", "builtin", {"name": "shakespeare"}),
        ("mixed", "builtin", {"name": "mixed"}),
        ("tfds:lm1b", "tfds", {"name": "lm1b", "config": None, "split": None}),
        ("tfds:lm1b:train", "tfds", {"name": "lm1b", "split": "train"}),
        ("tfds:lm1b:train[:10%]", "tfds", {"name": "lm1b", "split": "train[:10%]"}),
        ("tfds:lm1b:train[10%:]+test", "tfds", {"split": "train[10%:]+test"}),
        ("tfds:wikitext/wikitext-103-raw-v1", "tfds", {"name": "wikitext", "config": "wikitext-103-raw-v1"}),
        ("tfds:wikitext/wikitext-2-v1:validation", "tfds", {"config": "wikitext-2-v1", "split": "validation"}),
        ("notes/*.md", "files", {"path": "notes/*.md"}),
        ("absent.txt", "files", {"path": "absent.txt"}),  # only the form is checked: a config loads anywhere
        ("data/corpus.jsonl.gz", "files", {}),
        ("x.PARQUET", "files", {}),
        ("some/folder", "files", {}),  # absent here: perhaps a directory where the config came from
        ("/absent/notes/", "files", {}),
    ],
)
def test_parse_corpus_accepts(value, kind, fields):
    spec = parse_corpus(value)
    assert spec.kind == kind
    for name, expected in fields.items():
        assert getattr(spec, name) == expected
    if kind == "tfds":
        assert spec.tfds_name == value[5:].split(":")[0]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        None,
        3,
        "tfds:",
        "tfds:a:b:c",
        "tfds:lm1b:",
        "tfds:a/b/c",
        "tfds:lm 1b",
        "tfds:lm1b:train]",
        "x.csv",
        "data/x.csv",
        "notes",
        "Shakespeare",
    ],
)
def test_parse_corpus_rejects(value):
    with pytest.raises(ValueError, match="data.corpus") as caught:
        parse_corpus(value)
    with pytest.raises(ValueError, match="data.corpus") as through_config:
        DataConfig(corpus=value)
    assert "\n" not in str(caught.value) and str(through_config.value) == str(caught.value)


def test_parse_corpus_existing_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "table.csv").write_text("a\n")
    (tmp_path / "README").write_text("a\n")
    assert parse_corpus("folder").kind == "files"  # an existing directory, no slash needed
    for name in ("table.csv", "README", str(tmp_path / "README")):  # existing files of another type
        with pytest.raises(ValueError, match="unsupported file type"):
            parse_corpus(name)


@pytest.mark.parametrize("value", ["bpe", "wordpiece", "byte", "tok/tokenizer.json", "/abs/GPT2.JSON"])
def test_tokenizer_spec_accepts(value):
    check_tokenizer_spec(value)
    assert DataConfig(tokenizer=value).tokenizer == value


@pytest.mark.parametrize("value", ["sentencepiece", "tok.txt", "BPE", "", None, 4096, "tokenizer"])
def test_tokenizer_spec_rejects(value):
    with pytest.raises(ValueError, match="data.tokenizer"):
        check_tokenizer_spec(value)
    with pytest.raises(ValueError, match="data.tokenizer .*got " + re.escape(repr(value))):
        DataConfig(tokenizer=value)


# ---------------------------------------------------------------- TFDS, offline


@pytest.fixture
def offline_tfds(tmp_path, monkeypatch):
    """An empty TFDS data dir and no network (see `_fixtures.offline_tfds`)."""
    return fixtures_offline_tfds(tmp_path, monkeypatch)


def test_tfds_source_keeps_the_datasets_own_splits(offline_tfds, tmp_path, monkeypatch):
    tfds, home = offline_tfds
    with mock_lm1b(tmp_path, num_examples=11):
        source = open_source("tfds:lm1b")
        assert source.name == "tfds:lm1b" and sorted(source.tfds_splits) == ["train", "validation"]
        pieces = list(source.pieces())
        for ours, theirs in (("train", "train"), ("validation", "test")):
            records = tfds.data_source("lm1b", split=theirs)
            texts = [
                r["text"].decode() if isinstance(r["text"], bytes) else r["text"]
                for r in (records[i] for i in range(len(records)))
            ]
            mine = [p for p in pieces if p.split == ours]
            assert [p.text for p in mine] == texts and len(texts) == 11
            assert [p.group for p in mine] == [f"{ours}:{i}" for i in range(11)]
        assert [p.split for p in pieces] == ["train"] * 11 + ["validation"] * 11
        fingerprint = source.fingerprint()
        assert open_source("tfds:lm1b").fingerprint() == fingerprint

        one = open_source("tfds:lm1b:train")  # one split named: split by group like files
        assert list(one.tfds_splits) == ["train"]
        assert [p.split for p in one.pieces()] == [None] * 11
        assert one.fingerprint() != fingerprint

        with pytest.raises(DataSourceError) as caught:
            open_source("tfds:lm1b", text_field="body")
        _one_line(caught.value, "tfds:lm1b", "no feature 'body'", "features: text", "data.text_field")
    assert not any(home.iterdir())  # nothing written to the TFDS data dir


@pytest.mark.parametrize("corpus", ["tfds:lm1b", "tfds:lm1b:train", "tfds:wikitext/wikitext-2-raw-v1"])
def test_unprepared_tfds_dataset_names_tfds_build(offline_tfds, corpus):
    tfds, home = offline_tfds
    with pytest.raises(paths.MissingDataError) as caught:
        open_source(corpus)
    name = parse_corpus(corpus).tfds_name
    message = _one_line(
        caught.value, f"TFDS dataset {name} is not prepared in {home}", f"tfds build {name}", "TFDS_DATA_DIR"
    )
    assert "Traceback" not in message
    assert not any(home.iterdir())


def test_sources_are_read_lazily(tmp_path, monkeypatch):
    """The first piece comes before the second file is opened: nothing reads the whole corpus first."""
    rng = fresh_rng()
    write_text_files(tmp_path, rng, [f"f{i}.txt" for i in range(4)])
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    pieces = open_source(str(tmp_path)).pieces()
    first = next(pieces)
    assert first.group.startswith(str(tmp_path / "f0.txt")) and opened == [str(tmp_path / "f0.txt")]
    rest = list(pieces)
    assert opened == [str(tmp_path / f"f{i}.txt") for i in range(4)] and rest[-1].ends
