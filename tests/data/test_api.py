"""The public API of cottention_jax.data: the names users import are there, and every exported name exists."""

import cottention_jax.data as data

EXPECTED = {
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
}


def test_the_documented_names_are_exported_and_exist():
    assert EXPECTED <= set(data.__all__)
    assert all(hasattr(data, name) for name in data.__all__)
    assert issubclass(data.MissingDataError, FileNotFoundError)
    assert issubclass(data.CorruptDataError, ValueError)
    assert issubclass(data.DataSourceError, ValueError)
