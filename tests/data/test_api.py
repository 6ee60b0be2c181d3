"""The public API of cottention_jax.data: the names users import are there, and every exported name exists."""

import cottention_jax.data as data

EXPECTED = {
    "CORPORA", "DEFAULT_VOCAB_SIZE", "TASKS", "TASK_LABELS",
    "ByteTokenizer", "ClassificationBatches", "CorruptDataError", "CottentionTask",
    "CottentionText", "Document", "GPTBatches", "HFTokenizer", "MLMBatches", "MissingDataError",
    "TaskDataset", "TaskSplit", "TextDataset", "Tokenizer",
    "classification_eval_batches", "default_data_dir", "embedded_corpus_provenance",
    "encode_classification_inputs", "get_tokenizer", "gpt_eval_batches", "load_corpus",
    "load_embedded_corpus", "load_task_dataset", "load_task_examples", "load_text_dataset",
    "load_tokenizer", "mask_tokens", "mlm_eval_batches", "pack_documents", "split_documents",
    "train_tokenizer",
}


def test_the_documented_names_are_exported_and_exist():
    assert EXPECTED <= set(data.__all__)
    assert all(hasattr(data, name) for name in data.__all__)
    assert issubclass(data.MissingDataError, FileNotFoundError)
    assert issubclass(data.CorruptDataError, ValueError)
