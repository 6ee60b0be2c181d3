"""Build the labelled BERT finetuning tasks from package registries, and print baselines of each.

    python experiments/build_tasks.py                       # both tasks -> <data_dir>/tasks/
    python experiments/build_tasks.py --task paraphrase

(`cottention-data build-task TASK` builds one without the baselines, in a wheel install too.)
sentiment: movie-review sentences rated by people (vaderSentiment==3.3.2 sdist);
paraphrase: KJV / WEB verse pairs (Debian sword-text-kjv, sword-text-web).
The data dir defaults to $COTTENTION_DATA_DIR or ~/.cache/cottention_jax. The task is tokenized
when a finetuning run first reads it.
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from cottention_jax.data import fetch, tasks


def _overlap(example: dict) -> float:
    a, b = (set(re.findall(r"[a-z0-9]+", example[k].lower())) for k in ("text_a", "text_b"))
    return len(a & b) / max(len(a | b), 1)


def overlap_baseline(examples: list[dict]) -> float:
    """Test accuracy of 'same if word overlap > t', t chosen on the train split (pair tasks)."""
    train = [(_overlap(e), e["label"]) for e in examples if e["split"] == "train"]
    test = [(_overlap(e), e["label"]) for e in examples if e["split"] == "test"]
    scores, labels = np.array(train).T
    best = max(np.unique(scores), key=lambda t: np.mean((scores > t) == labels))
    return float(np.mean([(s > best) == y for s, y in test]))


def majority_baseline(examples: list[dict]) -> float:
    train = [e["label"] for e in examples if e["split"] == "train"]
    majority = int(np.bincount(train).argmax())
    return float(np.mean([e["label"] == majority for e in examples if e["split"] == "test"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", nargs="+", default=list(tasks.TASKS), choices=tasks.TASKS)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    for task in args.task:
        fetch.build_task(task, args.data_dir)
        examples = tasks.load_task_examples(task, args.data_dir)
        print(
            f"{task}: majority-class test accuracy {majority_baseline(examples):.3f}"
            + (f", word-overlap baseline {overlap_baseline(examples):.3f}" if task == "paraphrase" else "")
        )


if __name__ == "__main__":
    main()
