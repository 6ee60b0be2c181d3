"""What a training run reads: the data of `config.data` for `config.kind`, prepared once and streamed.

`prepare_data(config)` returns a `DataBundle`: the tokenizer, the resumable training iterator
(Grain batches of the prepared text, or of the prepared labelled task) and the finite evaluation
splits. In a run of P processes each process reads its own rows of every global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from cottention_jax import data as data_lib
from cottention_jax.configs import TrainConfig
from cottention_jax.data import classification, documents, pipeline, prepare

__all__ = ["DataBundle", "prepare_data"]


@dataclasses.dataclass
class DataBundle:
    """What a run reads: the tokenizer, the resumable training iterator and finite evaluation splits."""

    tokenizer: Any
    train: Any  # get_state() / set_state() / __next__
    eval_splits: dict[str, Callable[[], Iterator[dict]]]  # name -> fresh iterator over that split
    description: str
    prepared: Any = None  # the prepared text (gpt, bert-mlm)
    task: Any = None  # the prepared task (bert-classify)


def _shard(batch_size: int) -> tuple[int, int, int]:
    """(batch rows per process, this process's index, process count): each process reads its own rows."""
    index, count = jax.process_index(), jax.process_count()
    if batch_size % count:
        raise ValueError(f"data.batch_size ({batch_size}) must be divisible by the {count} processes")
    return batch_size // count, index, count


def _task_tokenizer(config: TrainConfig, log: Callable[[str], None]):
    """Finetuning reads the pretraining run's own tokenizer (its tokenizer.json), else data.tokenizer."""
    if config.init_from and (Path(config.init_from) / "tokenizer.json").is_file():
        return data_lib.load_tokenizer(Path(config.init_from) / "tokenizer.json")
    d = config.data
    source = documents.open_source(d.corpus, d.text_field, d.data_dir)
    return prepare.resolve_tokenizer(source, d.tokenizer, d.vocab_size, d.validation_fraction, d.data_dir, log)


def prepare_data(config: TrainConfig, *, progress: bool = False, log: Callable[[str], None] = tqdm.write) -> DataBundle:
    """The data of `config.data` for `config.kind`, prepared (tokenized to disk) on first use and streamed.

    Raises MissingDataError / DataSourceError (one line, naming the file) before anything is written.
    """
    d = config.data
    rows, index, count = _shard(d.batch_size)
    if config.kind == "bert-classify":
        assert d.task is not None  # TrainConfig requires one for bert-classify
        fields = tuple(f.strip() for f in d.task_text_fields.split(",")) if d.task_text_fields else None
        task = classification.prepare_task(
            d.task,
            _task_tokenizer(config, log),
            data_dir=d.data_dir,
            text_fields=fields,
            label_field=d.task_label_field,
            progress=progress,
        )
        evals = {"eval": lambda: task.eval_batches("validation", rows, d.seq_len)}
        if task.has_test:
            evals["test"] = lambda: task.eval_batches("test", rows, d.seq_len)
        task_train = task.train_batches(rows, d.seq_len, seed=d.seed, shard_index=index, shard_count=count)
        return DataBundle(task.tokenizer, task_train, evals, f"task {d.task}: {task.split_sizes}", task=task)
    prepared = prepare.prepare_text(
        d.corpus,
        tokenizer=d.tokenizer,
        vocab_size=d.vocab_size,
        text_field=d.text_field,
        validation_fraction=d.validation_fraction,
        data_dir=d.data_dir,
        progress=progress,
        log=log,
    )
    # each process reads its rows of every global batch
    if config.kind == "gpt":
        train = pipeline.gpt_train_batches(
            prepared, d.batch_size, d.seq_len, seed=d.seed, shard_index=index, shard_count=count
        )
        evals = {
            "eval": lambda: pipeline.gpt_eval_batches(
                prepared, d.batch_size, d.seq_len, shard_index=index, shard_count=count
            )
        }
    else:
        train = pipeline.mlm_train_batches(
            prepared, d.batch_size, d.seq_len, seed=d.seed, shard_index=index, shard_count=count
        )
        evals = {
            "eval": lambda: pipeline.mlm_eval_batches(
                prepared, d.batch_size, d.seq_len, seed=d.seed, shard_index=index, shard_count=count
            )
        }
    return DataBundle(prepared.tokenizer, train, evals, prepared.describe(), prepared=prepared)
