"""Labelled tasks for BERT finetuning, from any source, tokenized once into ArrayRecord and read with Grain.

    task = prepare_task("tfds:glue/mrpc", tokenizer)         # or "sentiment", "reviews.csv", "dir/", ...
    train = task.train_batches(batch_size=32, seq_len=128, seed=0)     # infinite, resumable
    batch = next(train); state = train.get_state()                    # JSON-able; set_state(state) resumes
    for batch in task.eval_batches("validation", 32, 128): ...         # every example once, in order

Task specs (`prepare_task(task, ...)`):

- "sentiment", "paraphrase": the built-in tasks of `tasks.py` (built by
  experiments/build_tasks.py into the data dir), fields text_a / text_b.
- "tfds:NAME[/CONFIG]" (e.g. "tfds:glue/sst2"): a TFDS dataset already prepared in
  array_record format in `$TFDS_DATA_DIR` or `~/tensorflow_datasets` (nothing is downloaded here). GLUE tasks
  take their fields, validation split (MNLI: validation_matched) and metrics from
  `glue.TASKS`; other datasets name their fields with `text_fields`, or have a
  "text" / "sentence" / "sentence1"+"sentence2" feature. A dataset without a
  validation split gives 10% of its train split (by a hash of the example's text).
- a path to a .csv, .jsonl or .jsonl.gz file (one JSON object per line; CSV with a
  header row): split by a SHA-256 of the example's text fields into train /
  validation / test = 80/10/10 (duplicates fall in one split, so none leaks); or a
  folder holding train.<ext>, validation.<ext> and optionally test.<ext>. Default
  fields: "sentence1"+"sentence2", else "text_a"+"text_b", else "text", else "sentence".

Labels (field `label_field`, default "label") must be numbers (a CSV cell or JSON
string holding one is read as one). Integers >= 0 make a classification task with
num_labels = max + 1 (TFDS: the ClassLabel's size); anything else (a fraction, a
negative value) makes a regression task (num_labels 1, MSE loss). A test split
whose labels are all -1 (GLUE's hidden test labels) or absent is not offered.

Prepared data: `<data_dir>/prepared/task-<fingerprint>/` (`cache.prepared_folder`:
locked, atomic) holds {split}.array_record and meta.json. The fingerprint covers the
spec, the source (file size and modification time; TFDS name, version and split
sizes; the built-in task's SHA256SUMS), the fields, the tokenizer's JSON and
FORMAT_VERSION. A record is the bytes of `<u4 len_a, <u4 len_b, <f8 label`, then
len_a + len_b <i4 token ids.

Batches (B = batch_size, T = seq_len; [CLS] a [SEP] or [CLS] a [SEP] b [SEP]):
input_ids, segment_ids (B, T) int32, padding_mask (B, T) bool, labels (B,) int32
(float32 for regression), weights (B,) float32 (0 on the padding rows of the last
evaluation batch).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from cottention_jax.data import cache
from cottention_jax.data import tasks as builtin_tasks
from cottention_jax.data.batching import encode_classification_inputs
from cottention_jax.data.task_sources import SPLITS, RawTask, builtin_source, file_source, tfds_source
from cottention_jax.data.tokenization import Tokenizer

__all__ = ["FORMAT_VERSION", "PreparedTask", "TaskBatches", "prepare_task"]

FORMAT_VERSION = 1
_HEADER = struct.Struct("<IId")
_ENCODE_CHUNK = 1000


# ----------------------------------------------------------------------------- records


def _record(ids_a: Sequence[int], ids_b: Sequence[int], label: float) -> bytes:
    return (
        _HEADER.pack(len(ids_a), len(ids_b), float(label))
        + np.asarray(ids_a, "<i4").tobytes()
        + np.asarray(ids_b, "<i4").tobytes()
    )


def _parse(record: bytes) -> tuple[np.ndarray, np.ndarray, float]:
    la, lb, label = _HEADER.unpack_from(record)
    ids = np.frombuffer(record, "<i4", count=la + lb, offset=_HEADER.size).astype(np.int32)
    return ids[:la], ids[la:], label


def _collate(
    records: Sequence[bytes], tokenizer: Tokenizer, seq_len: int, is_pair: bool, is_regression: bool, batch_size: int
) -> dict[str, np.ndarray]:
    """The batch dict of up to batch_size records; missing rows are padding with weight 0."""
    parsed = [_parse(r) for r in records]
    ids_a = [p[0] for p in parsed]
    ids_b = [p[1] for p in parsed] if is_pair else None
    input_ids, segment_ids, padding_mask = encode_classification_inputs(ids_a, ids_b, tokenizer, seq_len)
    labels = np.asarray([p[2] for p in parsed], np.float32 if is_regression else np.int32)
    fill = batch_size - len(parsed)

    def padded(x, value=0):
        return np.concatenate([x, np.full((fill,) + x.shape[1:], value, x.dtype)]) if fill else x

    return {
        "input_ids": padded(input_ids, tokenizer.pad_id),
        "segment_ids": padded(segment_ids),
        "padding_mask": padded(padding_mask, False),
        "labels": padded(labels),
        "weights": padded(np.ones(len(parsed), np.float32), 0.0),
    }


# ----------------------------------------------------------------------------- the prepared task


class TaskBatches:
    """Infinite shuffled training batches of one split, through Grain; resumable exactly.

    `next(it)` -> the batch dict; `get_state()` -> {settings..., "grain": Grain's state};
    `set_state(state)` refuses a state whose settings differ (ValueError naming the key).
    """

    def __init__(
        self,
        task: PreparedTask,
        split: str,
        batch_size: int,
        seq_len: int,
        seed: int,
        shard_index: int = 0,
        shard_count: int = 1,
    ):
        import grain

        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self._settings = {
            "kind": "task",
            "task": task.fingerprint,
            "split": split,
            "batch_size": int(batch_size),
            "seq_len": int(seq_len),
            "seed": int(seed),
            "shard_index": int(shard_index),
            "shard_count": int(shard_count),
        }
        collate = functools.partial(
            _collate,
            tokenizer=task.tokenizer,
            seq_len=int(seq_len),
            is_pair=task.is_pair,
            is_regression=task.is_regression,
            batch_size=int(batch_size),
        )
        # The stream is infinite, so no batch is dropped; drop_remainder=True also keeps Grain 0.2.18 from
        # overflowing when it computes the length of batch_size-1 batches of an infinite stream.
        ds = (
            grain.MapDataset.source(grain.sources.ArrayRecordDataSource([str(task.record_path(split))]))
            .shuffle(seed=int(seed))
            .repeat(None)[shard_index::shard_count]
            .batch(int(batch_size), drop_remainder=True, batch_fn=list)
            .map(collate)
        )
        self._iter = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))

    def __iter__(self) -> TaskBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict:
        return {**self._settings, "grain": self._iter.get_state()}

    def set_state(self, state: Mapping) -> None:
        for key, value in self._settings.items():
            if state.get(key) != value:
                raise ValueError(
                    f"state[{key!r}] is {state.get(key)!r} but these batches have {key}={value!r}: "
                    f"the state belongs to other data or settings"
                )
        if "grain" not in state:
            raise ValueError(f"state must have a 'grain' entry, got keys {sorted(state)}")
        self._iter.set_state(state["grain"])


@dataclasses.dataclass(frozen=True)
class PreparedTask:
    """A tokenized task in `folder`; see the module docstring. Build it with `prepare_task`."""

    folder: Path
    name: str
    label_names: tuple[str, ...]  # () for regression
    num_labels: int  # 1 for regression
    is_regression: bool
    is_pair: bool
    metric_names: tuple[str, ...]  # keys of glue.METRICS; the first is the headline
    split_sizes: Mapping[str, int]  # the splits offered: train, validation and maybe test
    fingerprint: str
    tokenizer: Tokenizer = dataclasses.field(repr=False, compare=False)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if s in self.split_sizes)

    @property
    def has_test(self) -> bool:
        """Whether a labelled test split is offered."""
        return "test" in self.split_sizes

    def record_path(self, split: str) -> Path:
        if split not in self.split_sizes:
            raise ValueError(f"task {self.name} offers splits {list(self.splits)}, not {split!r}")
        return self.folder / f"{split}.array_record"

    def _records(self, split: str) -> list[bytes]:
        from array_record.python.array_record_module import ArrayRecordReader

        reader = ArrayRecordReader(str(self.record_path(split)))
        try:
            return reader.read_all()
        finally:
            reader.close()

    def read_split(self, split: str) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """The stored examples in order: ids_a, ids_b (empty arrays for single texts), labels (N,) float64."""
        parsed = [_parse(r) for r in self._records(split)]
        return [p[0] for p in parsed], [p[1] for p in parsed], np.asarray([p[2] for p in parsed], np.float64)

    def train_batches(
        self, batch_size: int, seq_len: int, seed: int, shard_index: int = 0, shard_count: int = 1
    ) -> TaskBatches:
        """Infinite shuffled batches of the train split (this process's shard: every
        shard_count-th example of the global shuffled stream, from shard_index)."""
        return TaskBatches(self, "train", batch_size, seq_len, seed, shard_index, shard_count)

    def eval_batches(self, split: str, batch_size: int, seq_len: int) -> Iterator[dict[str, np.ndarray]]:
        """Every example of `split` once, in order; the last batch is padded with weight-0 rows."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        records = self._records(split)
        for start in range(0, len(records), batch_size):
            yield _collate(
                records[start : start + batch_size],
                self.tokenizer,
                seq_len,
                self.is_pair,
                self.is_regression,
                int(batch_size),
            )


# ----------------------------------------------------------------------------- prepare


def _label_kind(raw: RawTask, where: str) -> tuple[bool, tuple[str, ...], int]:
    """(is_regression, label_names, num_labels), checking every label against them."""
    values = np.concatenate(list(raw.labels.values()))
    integral = bool(np.all(values == np.round(values)) and np.all(values >= 0))
    is_regression = (not integral) if raw.is_regression is None else raw.is_regression
    if is_regression:
        return True, (), 1
    if not integral:
        bad = values[(values != np.round(values)) | (values < 0)][0]
        raise ValueError(f"{where}: label {bad!r} is not a class id (an integer >= 0)")
    names = raw.label_names or tuple(str(i) for i in range(max(int(values.max()) + 1, 2)))
    if values.max() >= len(names):
        raise ValueError(f"{where}: label {int(values.max())} is out of range for the {len(names)} classes {names}")
    return False, tuple(names), len(names)


def _build(folder: Path, raw: RawTask, spec: str, fingerprint: str, tokenizer: Tokenizer, progress: bool) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    is_regression, label_names, num_labels = _label_kind(raw, spec)
    is_pair = len(next(iter(raw.texts.values()))[0]) == 2
    sizes = {}
    for split in SPLITS:
        if split not in raw.texts:
            continue
        rows, labels = raw.texts[split], raw.labels[split]
        writer = ArrayRecordWriter(str(folder / f"{split}.array_record"), "group_size:1")
        chunks = range(0, len(rows), _ENCODE_CHUNK)
        for start in tqdm(chunks, desc=f"tokenize {raw.name} {split}", disable=not progress, unit="chunk"):
            chunk = rows[start : start + _ENCODE_CHUNK]
            ids_a = tokenizer.encode_batch([r[0] for r in chunk])
            ids_b = tokenizer.encode_batch([r[1] for r in chunk]) if is_pair else [()] * len(chunk)
            for a, b, label in zip(ids_a, ids_b, labels[start : start + _ENCODE_CHUNK], strict=True):
                writer.write(_record(a, b, label))
        writer.close()
        sizes[split] = len(rows)
    if raw.metric_names:
        metrics = raw.metric_names
    else:
        metrics = ("pearson", "spearman") if is_regression else ("accuracy", "f1") if num_labels == 2 else ("accuracy",)
    cache.write_meta(
        folder,
        {
            "format": FORMAT_VERSION,
            "spec": spec,
            "name": raw.name,
            "fingerprint": fingerprint,
            "label_names": list(label_names),
            "num_labels": num_labels,
            "is_regression": is_regression,
            "is_pair": is_pair,
            "metric_names": list(metrics),
            "split_sizes": sizes,
        },
    )


def prepare_task(
    task: str,
    tokenizer: Tokenizer,
    *,
    data_dir=None,
    text_fields: tuple[str, ...] | None = None,
    label_field: str = "label",
    progress: bool = False,
) -> PreparedTask:
    """The tokenized task of spec `task` (see the module docstring), prepared on first use.

    Raises paths.MissingDataError (a missing file, built-in task or TFDS dataset; the message
    says how to make it) and ValueError naming the file and field of a bad input.
    """
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a non-empty string, got {task!r}")
    if text_fields is not None:
        text_fields = tuple(text_fields)
        if not 1 <= len(text_fields) <= 2:
            raise ValueError(f"text_fields must name one or two fields (BERT reads at most a pair), got {text_fields}")
    fields: tuple[str, ...] | None
    if task in builtin_tasks.TASKS:
        parts, load = builtin_source(task, data_dir)
        fields = ("text_a", "text_b") if task == "paraphrase" else ("text_a",)
    elif task.startswith("tfds:"):
        parts, fields, load = tfds_source(task[len("tfds:") :], text_fields, label_field)
    else:
        parts, load = file_source(Path(task).expanduser(), text_fields, label_field)
        fields = text_fields
    tokenizer_sha = hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()
    key = {
        "format": FORMAT_VERSION,
        "spec": task,
        "source": parts,
        "text_fields": fields,
        "label_field": label_field,
        "tokenizer": tokenizer_sha,
    }
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    folder = cache.prepared_folder(
        data_dir, "task", fingerprint, lambda tmp: _build(tmp, load(), task, fingerprint, tokenizer, progress)
    )
    meta = cache.read_meta(folder)
    return PreparedTask(
        folder=folder,
        name=meta["name"],
        label_names=tuple(meta["label_names"]),
        num_labels=meta["num_labels"],
        is_regression=meta["is_regression"],
        is_pair=meta["is_pair"],
        metric_names=tuple(meta["metric_names"]),
        split_sizes=dict(meta["split_sizes"]),
        fingerprint=fingerprint,
        tokenizer=tokenizer,
    )
