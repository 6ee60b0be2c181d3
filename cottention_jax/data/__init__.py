"""Offline data: text sources, tokenizers, prepared (tokenized) corpora and Grain input pipelines.

Nothing here downloads. A text source is a built-in corpus (`shakespeare` ships in the package;
`mixed` is built from package registries by `cottention-data build-mixed`), a user's files
(.txt/.md, .jsonl[.gz], .parquet: a file, directory or glob) or a prepared TFDS dataset
(`tfds:NAME[/CONFIG][:SPLIT]`). It is prepared once into ArrayRecord token streams and then
streamed by Grain (`pipeline.py`):

    prepared = prepare_text("my_notes/", tokenizer="bpe", vocab_size=4096)   # cached by fingerprint
    train = gpt_train_batches(prepared, batch_size=32, seq_len=256, seed=0)
    batch = next(train)               # {"inputs", "targets", "weights"}, numpy
    state = train.get_state()         # small JSON dict: store it in the checkpoint
    train.set_state(state)            # on resume: the next batch follows exactly
    for batch in gpt_eval_batches(prepared, 32, 256): ...

Labelled tasks for BERT finetuning (built-in, TFDS GLUE, CSV/JSONL) go the same way through
`classification.prepare_task`.
"""

from cottention_jax.data.batching import encode_classification_inputs, mask_tokens
from cottention_jax.data.corpus import (
    CORPORA,
    Document,
    embedded_corpus_provenance,
    load_corpus,
    load_embedded_corpus,
    split_documents,
)
from cottention_jax.data.documents import DataSourceError, TextSource, open_source
from cottention_jax.data.paths import CorruptDataError, MissingDataError, default_data_dir
from cottention_jax.data.prepare import PreparedText, open_prepared, prepare_text
from cottention_jax.data.tasks import TASK_LABELS, TASKS, load_task_examples
from cottention_jax.data.tokenization import (
    DEFAULT_VOCAB_SIZE,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    get_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

# The Grain pipelines import grain (the [train] extra): they load on first use, so that corpora and
# tokenizers work without it (`cottention-generate` in a base install).
_PIPELINE_NAMES = (
    "Batches",
    "TokenStream",
    "gpt_eval_batches",
    "gpt_train_batches",
    "mlm_eval_batches",
    "mlm_train_batches",
)


def __getattr__(name: str):
    if name in _PIPELINE_NAMES:
        from cottention_jax.data import pipeline  # noqa: PLC0415

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CORPORA",
    "DEFAULT_VOCAB_SIZE",
    "TASKS",
    "TASK_LABELS",
    "Batches",
    "ByteTokenizer",
    "CorruptDataError",
    "DataSourceError",
    "Document",
    "HFTokenizer",
    "MissingDataError",
    "PreparedText",
    "TextSource",
    "TokenStream",
    "Tokenizer",
    "default_data_dir",
    "embedded_corpus_provenance",
    "encode_classification_inputs",
    "get_tokenizer",
    "gpt_eval_batches",
    "gpt_train_batches",
    "load_corpus",
    "load_embedded_corpus",
    "load_task_examples",
    "load_tokenizer",
    "mask_tokens",
    "mlm_eval_batches",
    "mlm_train_batches",
    "open_prepared",
    "open_source",
    "prepare_text",
    "split_documents",
    "train_tokenizer",
]
