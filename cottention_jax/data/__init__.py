"""Offline data: corpora, tokenizers, TFDS datasets and resumable batch iterators.

Nothing here downloads. The Shakespeare corpus and its default tokenizers ship in
the package (`cottention_jax/data/shipped/`); larger corpora and the labelled tasks are built from
package registries by `experiments/build_corpus.py` and `experiments/build_tasks.py`.

Typical use (GPT on the embedded corpus):

    ds = load_text_dataset("shakespeare", tokenizer="bpe")        # builds on first use
    train = GPTBatches(ds.train, ds.tokenizer, batch_size=32, seq_len=256, seed=0)
    batch = next(train)               # {"inputs", "targets", "weights"}, numpy
    state = train.get_state()         # JSON dict: store it in the checkpoint
    train.set_state(state)            # on resume: the next batch follows exactly
    for batch in gpt_eval_batches(ds.validation, ds.tokenizer, 32, 256): ...
"""

from cottention_jax.data.batching import (
    ClassificationBatches,
    GPTBatches,
    MLMBatches,
    classification_eval_batches,
    encode_classification_inputs,
    gpt_eval_batches,
    mask_tokens,
    mlm_eval_batches,
    pack_documents,
)
from cottention_jax.data.corpus import (
    CORPORA,
    Document,
    embedded_corpus_provenance,
    load_corpus,
    load_embedded_corpus,
    split_documents,
)
from cottention_jax.data.paths import (
    CorruptDataError,
    MissingDataError,
    default_data_dir,
)
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

# The TFDS builders import tensorflow-datasets (the [train] extra): they load on first use, so
# that corpora and tokenizers work without it (`cottention-generate` in a base install).
_BUILDER_NAMES = ("CottentionTask", "CottentionText", "TaskDataset", "TaskSplit", "TextDataset",
                  "load_task_dataset", "load_text_dataset")


def __getattr__(name: str):
    if name in _BUILDER_NAMES:
        from cottention_jax.data import builders  # noqa: PLC0415

        return getattr(builders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CORPORA",
    "DEFAULT_VOCAB_SIZE",
    "TASKS",
    "TASK_LABELS",
    "ByteTokenizer",
    "ClassificationBatches",
    "CorruptDataError",
    "CottentionTask",
    "CottentionText",
    "Document",
    "GPTBatches",
    "HFTokenizer",
    "MLMBatches",
    "MissingDataError",
    "TaskDataset",
    "TaskSplit",
    "TextDataset",
    "Tokenizer",
    "classification_eval_batches",
    "default_data_dir",
    "embedded_corpus_provenance",
    "encode_classification_inputs",
    "get_tokenizer",
    "gpt_eval_batches",
    "load_corpus",
    "load_embedded_corpus",
    "load_task_dataset",
    "load_task_examples",
    "load_text_dataset",
    "load_tokenizer",
    "mask_tokens",
    "mlm_eval_batches",
    "pack_documents",
    "split_documents",
    "train_tokenizer",
]
