"""Labelled tasks for BERT finetuning, built offline from registry packages.

- `sentiment` (single sentence, labels negative/positive): the 10,605 movie-review
  sentences with mean human ratings in [-4, 4] shipped in the `vaderSentiment==3.3.2`
  sdist (drawn from the Rotten Tomatoes reviews of Pang & Lee, the source of SST).
  Sentences rated within +-0.5 of neutral are dropped (as SST-2 drops neutral
  phrases); duplicates are kept once.
- `paraphrase` (sentence pair, labels different/same): a verse of the King James
  Version beside World English Bible text. Same reference -> "same". A negative
  pairs the KJV verse with the WEB verse of the same chapter sharing the most
  words with it (same names, same topic), either whole ("other_verse") or spliced
  with the true WEB verse, half of one and half of the other ("spliced": half the
  words still match). Half of the references give a positive, half a negative,
  half of the negatives spliced; the order of the two texts is random. On the
  real data a word-overlap threshold scores about 85% on the test split (92%
  without the spliced negatives), so the task is learnable but not trivial.

Splits (train/validation/test = 80/10/10) come from a SHA-256 of a key, so they
are fixed whatever the machine: the sentence for sentiment, the chapter for
paraphrase (all verses of a chapter, positives and negatives, share one split).
The movie-review sentences are for research use, so tasks are built on each
machine by `cottention-data build-task <task>` into `<data_dir>/tasks/<task>/`,
never committed.

An example is a dict {"id", "text_a", "text_b" ("" for single sentences),
"label" (int), "split"}; paraphrase examples also carry "kind" ("same",
"other_verse" or "spliced") for analysis.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from cottention_jax.data import paths

__all__ = [
    "TASKS",
    "TASK_LABELS",
    "TASK_SPLITS",
    "build_paraphrase_examples",
    "build_sentiment_examples",
    "load_task_examples",
    "task_dir",
    "task_rebuild_command",
    "write_task",
]

TASK_LABELS = {"sentiment": ("negative", "positive"), "paraphrase": ("different", "same")}
TASKS = tuple(TASK_LABELS)
TASK_SPLITS = ("train", "validation", "test")
_FRACTIONS = (0.8, 0.1, 0.1)


def _unit_hash(key: str) -> float:
    """A number in [0, 1) fixed by `key` (first 64 bits of its SHA-256)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) / 2.0**64


def _split_of(key: str, fractions: Sequence[float] = _FRACTIONS) -> str:
    u, edge = _unit_hash(key), 0.0
    for name, fraction in zip(TASK_SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return TASK_SPLITS[-1]


def build_sentiment_examples(snippets: Sequence[tuple[int, float, str]], neutral_band: float = 0.5) -> list[dict]:
    """Binary sentiment examples from (id, mean rating, sentence) rows.

    label 1 if rating > neutral_band, 0 if rating < -neutral_band; others dropped.
    The split is drawn from the sentence text, so a repeated sentence cannot leak.
    """
    if neutral_band < 0:
        raise ValueError(f"neutral_band must be >= 0, got {neutral_band}")
    seen, examples = set(), []
    for snippet_id, rating, text in snippets:
        text = " ".join(text.split())
        if not text or text in seen or abs(rating) <= neutral_band:
            continue
        seen.add(text)
        examples.append(
            {
                "id": f"mr-{snippet_id}",
                "text_a": text,
                "text_b": "",
                "label": int(rating > 0),
                "split": _split_of(f"sentiment:{text}"),
            }
        )
    return examples


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / max(len(a | b), 1)


def _splice(true: str, other: str, first_half_true: bool) -> str:
    """Half the words of one verse followed by the other half of the other verse."""
    t, o = true.split(), other.split()
    if first_half_true:
        return " ".join(t[: len(t) // 2] + o[len(o) // 2 :])
    return " ".join(o[: len(o) // 2] + t[len(t) // 2 :])


def build_paraphrase_examples(
    first: Mapping[tuple[str, int, int], str], second: Mapping[tuple[str, int, int], str], spliced_fraction: float = 0.5
) -> list[dict]:
    """Verse pairs from two verse-aligned translations {(book, chapter, verse): text}.

    For each reference present in both (in `first`'s order), coins fixed by the
    reference choose: a positive (first[ref], second[ref]) or a negative
    (first[ref], X) where `other` is the verse of the same chapter (with a
    different text) whose words overlap most (Jaccard) with first[ref], and X is
    second[other] or, with probability spliced_fraction, a splice of second[ref]
    and second[other]. A chapter with no such verse gives only positives. A last
    coin swaps text_a and text_b.
    """
    if not 0.0 <= spliced_fraction <= 1.0:
        raise ValueError(f"spliced_fraction must be in [0, 1], got {spliced_fraction}")
    refs = [ref for ref in first if ref in second]
    by_chapter: dict[tuple[str, int], list[tuple[str, int, int]]] = defaultdict(list)
    for ref in refs:
        by_chapter[ref[:2]].append(ref)
    words_second = {ref: _words(second[ref]) for ref in refs}
    examples = []
    for book, chapter, verse in refs:
        ref = (book, chapter, verse)
        key = f"{book}.{chapter}.{verse}"
        others = [r for r in by_chapter[(book, chapter)] if second[r] != second[ref]]
        partner, kind, text_b = ref, "same", second[ref]
        if others and _unit_hash(f"paraphrase-label:{key}") >= 0.5:
            anchor = _words(first[ref])
            # Most overlapping verse; ties go to the earliest verse.
            partner = max(others, key=lambda r: (_jaccard(anchor, words_second[r]), -r[2]))
            kind, text_b = "other_verse", second[partner]
            if _unit_hash(f"paraphrase-splice:{key}") < spliced_fraction:
                spliced = _splice(second[ref], second[partner], _unit_hash(f"paraphrase-side:{key}") < 0.5)
                if spliced != second[ref]:
                    kind, text_b = "spliced", spliced
        text_a = first[ref]
        if _unit_hash(f"paraphrase-order:{key}") < 0.5:
            text_a, text_b = text_b, text_a
        examples.append(
            {
                "id": f"{key}~{partner[2]}",
                "text_a": text_a,
                "text_b": text_b,
                "label": int(kind == "same"),
                "kind": kind,
                "split": _split_of(f"paraphrase:{book}.{chapter}"),
            }
        )
    return examples


def task_dir(task: str, data_dir=None) -> Path:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return paths.resolve_data_dir(data_dir) / "tasks" / task


def task_rebuild_command(task: str, data_dir=None) -> str:
    where = [] if data_dir is None else ["--data-dir", str(data_dir)]
    return shlex.join(["cottention-data", "build-task", task, *where])  # paths quoted


def write_task(task: str, examples: Sequence[dict], provenance: str, data_dir=None) -> Path:
    """Write `<data_dir>/tasks/<task>/<task>.jsonl.gz`, PROVENANCE.md and SHA256SUMS."""
    directory = task_dir(task, data_dir)
    n_labels = len(TASK_LABELS[task])
    for example in examples:
        if example["split"] not in TASK_SPLITS or not 0 <= example["label"] < n_labels:
            raise ValueError(
                f"examples: bad split or label in {example['id']}: "
                f"split={example['split']!r}, label={example['label']!r}"
            )
    out = paths.write_jsonl_gz(directory / f"{task}.jsonl.gz", examples)
    (directory / "PROVENANCE.md").write_text(provenance, encoding="utf-8")
    paths.write_checksums(directory, [out.name, "PROVENANCE.md"])
    return out


def load_task_examples(task: str, data_dir=None) -> list[dict]:
    """The examples of `task` built by `cottention-data build-task`, checked against SHA256SUMS."""
    directory = task_dir(task, data_dir)
    rebuild = task_rebuild_command(task, data_dir)
    paths.verify_checksums(directory, rebuild)
    examples = paths.read_jsonl_gz(directory / f"{task}.jsonl.gz", rebuild)
    required = {"id", "text_a", "text_b", "label", "split"}
    for example in examples:
        if not required <= set(example):
            raise paths.corrupt(
                directory / f"{task}.jsonl.gz", f"an example lacks {sorted(required - set(example))}", rebuild
            )
    return examples
