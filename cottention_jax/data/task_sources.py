"""Where labelled examples come from: a file or folder of files, a built-in task, a TFDS dataset.

Each `*_source(...)` returns (fingerprint parts, [text fields,] load): the parts are small JSON
that change when the source does (file size and modification time; the built-in task's
SHA256SUMS; TFDS name, version and split sizes), and `load()` reads the texts and labels into
a `RawTask` (slow: `classification.prepare_task` calls it only when the prepared folder is
absent). The rules (default fields, splits, labels) are in `classification`'s docstring.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import math
import numbers
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cottention_jax.data import glue, paths, tfds_catalog
from cottention_jax.data import tasks as builtin_tasks

__all__ = ["SPLITS", "RawTask", "builtin_source", "file_source", "hash_split", "tfds_source"]

SPLITS = ("train", "validation", "test")
_FILE_SUFFIXES = (".csv", ".jsonl", ".jsonl.gz")
_DEFAULT_FIELDS = (("sentence1", "sentence2"), ("text_a", "text_b"), ("text",), ("sentence",))


@dataclasses.dataclass
class RawTask:
    """Texts and labels of every split, before tokenization: texts[split] = (N, fields) strings."""

    name: str
    texts: dict[str, list[tuple[str, ...]]]
    labels: dict[str, np.ndarray]  # float64 (N,)
    label_names: tuple[str, ...] | None  # None: decide from the values
    metric_names: tuple[str, ...] | None  # None: by the kind of task
    is_regression: bool | None = None


def hash_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """train / validation / test, fixed by a SHA-256 of `key` whatever the machine."""
    u = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) / 2.0**64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]


def _number(value, where: str) -> float:
    """A label value as a float; ValueError naming `where` when it is not a number."""
    if isinstance(value, np.ndarray) and value.ndim == 0:  # a TFDS scalar feature
        value = value.item()
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if not math.isfinite(number):
        raise ValueError(f"{where}: label {value!r} is not a finite number")
    return number


def _default_fields(columns: Sequence[str], where: str) -> tuple[str, ...]:
    for fields in _DEFAULT_FIELDS:
        if all(f in columns for f in fields):
            return fields
    raise ValueError(
        f"{where}: no text field given and none of the default ones "
        f"({', '.join('+'.join(f) for f in _DEFAULT_FIELDS)}) is present; columns found: "
        f"{list(columns)}. Name them with text_fields"
    )


def _text(value, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"{where}: text {value!r} is not a string")
    return value


def _file_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row dict) of a .csv (header row first) or .jsonl[.gz] file."""
    name = path.name.lower()
    try:
        if name.endswith(".csv"):
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    if None in row:
                        raise ValueError(f"{path}: line {reader.line_num} has more cells than the header")
                    yield reader.line_num, row
            return
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {number} is not JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: line {number} is not a JSON object")
                yield number, row
    except (UnicodeDecodeError, OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def _read_file(path: Path, text_fields, label_field: str, need_labels: bool = True):
    """[(texts, label or None)], the text fields used. Labels None when the file has no label column
    (allowed only where not need_labels: a test file)."""
    rows = list(_file_rows(path))
    if not rows:
        raise ValueError(f"{path}: the file holds no example")
    columns = list(rows[0][1])
    fields = tuple(text_fields) if text_fields else _default_fields(columns, str(path))
    has_labels = label_field in columns
    if need_labels and not has_labels:
        raise ValueError(f"{path}: no label field {label_field!r}; columns found: {columns}")
    examples = []
    for number, row in rows:
        where = f"{path}: line {number}"
        absent = [f for f in (*fields, *([label_field] if has_labels else [])) if f not in row]
        if absent:
            raise ValueError(f"{where}: no field {absent[0]!r}; fields found: {list(row)}")
        texts = tuple(_text(row[f], f"{where}, field {f!r}") for f in fields)
        examples.append((texts, _number(row[label_field], f"{where}, field {label_field!r}") if has_labels else None))
    return examples, fields


def file_source(path: Path, text_fields, label_field: str):
    """(fingerprint parts, loader) for a file or a folder of split files."""
    if not path.exists():
        raise paths.MissingDataError(f"task file {path} does not exist")
    if path.is_dir():
        files = {}
        for split in SPLITS:
            found = [path / f"{split}{s}" for s in _FILE_SUFFIXES if (path / f"{split}{s}").is_file()]
            if len(found) > 1:
                raise ValueError(f"{path}: several {split} files ({[f.name for f in found]}); keep one")
            if found:
                files[split] = found[0]
        if "train" not in files or "validation" not in files:
            raise paths.MissingDataError(
                f"task folder {path} needs train and validation files "
                f"(train.csv / .jsonl / .jsonl.gz, ...); found {sorted(files)}"
            )
    elif path.name.lower().endswith(_FILE_SUFFIXES):
        files = {"": path}
    else:
        raise ValueError(f"task file {path}: expected a name ending in {', '.join(_FILE_SUFFIXES)}")
    stats = {split: [str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for split, f in files.items()}

    def load() -> RawTask:
        texts: dict[str, list[tuple[str, ...]]] = {s: [] for s in SPLITS}
        labels: dict[str, list[float]] = {s: [] for s in SPLITS}
        used = None
        for split, file in files.items():
            examples, fields = _read_file(file, text_fields, label_field, need_labels=split != "test")
            if used is not None and fields != used:
                raise ValueError(f"{file}: text fields {fields} differ from {used} of the other files")
            used = fields
            if split == "test" and (examples[0][1] is None or all(e[1] == -1 for e in examples)):
                continue  # an unlabelled test file: no test split
            for example_texts, label in examples:
                target = split or hash_split("\x1f".join(example_texts))
                texts[target].append(example_texts)
                labels[target].append(label)
        for split in ("train", "validation"):
            if not texts[split]:
                raise ValueError(f"{path}: the {split} split is empty")
        return RawTask(
            name=path.name.split(".")[0] if path.is_file() else path.name,
            texts={s: t for s, t in texts.items() if t},
            labels={s: np.asarray(v, np.float64) for s, v in labels.items() if v},
            label_names=None,
            metric_names=None,
        )

    return {"files": stats}, load


def builtin_source(task: str, data_dir):
    directory = builtin_tasks.task_dir(task, data_dir)
    sums = paths.read_checksums(directory, builtin_tasks.task_rebuild_command(task, data_dir))

    def load() -> RawTask:
        texts: dict[str, list[tuple[str, ...]]] = {s: [] for s in SPLITS}
        labels: dict[str, list[float]] = {s: [] for s in SPLITS}
        pair = task == "paraphrase"
        for example in builtin_tasks.load_task_examples(task, data_dir):
            texts[example["split"]].append((example["text_a"], example["text_b"]) if pair else (example["text_a"],))
            labels[example["split"]].append(float(example["label"]))
        return RawTask(
            name=task,
            texts={s: t for s, t in texts.items() if t},
            labels={s: np.asarray(v, np.float64) for s, v in labels.items() if v},
            label_names=builtin_tasks.TASK_LABELS[task],
            metric_names=None,
            is_regression=False,
        )

    return {"sha256sums": sums}, load


# ----------------------------------------------------------------------------- TFDS


def _read_all(source) -> list[dict]:
    """Every example of a TFDS data source, in order (batched reads where the source has them)."""
    try:
        return list(source.__getitems__(list(range(len(source)))))
    except (AttributeError, TypeError):  # tfds.testing.mock_data's sources read one at a time
        return [source[i] for i in range(len(source))]


def tfds_source(name: str, text_fields, label_field: str):
    tfds_dir = tfds_catalog.data_dir()
    tfds = tfds_catalog.import_builder(name)
    config = name.split("/", 1)[1] if name.startswith("glue/") else None
    table = glue.TASKS.get(config) if config else None
    try:
        builder = tfds.builder(name, data_dir=str(tfds_dir))
    except Exception as err:  # DatasetNotFoundError (a ValueError), or a broken builder
        raise tfds_catalog.not_prepared(name, f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    features = builder.info.features
    known = set(builder.info.splits)  # empty when not prepared (or mocked): then try each split
    wanted = {
        "train": "train",
        "validation": table.validation_split if table else "validation",
        "test": table.test_split if table else "test",
    }
    sources = {}
    for split, tfds_split in wanted.items():
        if split != "train" and known and tfds_split not in known:
            continue
        try:
            sources[split] = tfds.data_source(name, split=tfds_split, data_dir=str(tfds_dir), download=False)
        except Exception as err:
            if split == "train" or known:
                raise tfds_catalog.not_prepared(name, f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    columns = list(features.keys())
    fields = (
        tuple(text_fields)
        if text_fields
        else (table.text_fields if table else _default_fields(columns, f"TFDS dataset {name}"))
    )
    for field in (*fields, label_field):
        if field not in columns:
            raise ValueError(f"TFDS dataset {name}: no feature {field!r}; features found: {columns}")
    label_feature = features[label_field]
    class_names = tuple(getattr(label_feature, "names", None) or ()) or None
    is_regression = table.is_regression if table else np.dtype(label_feature.np_dtype).kind == "f"
    parts = {
        "tfds": name,
        "version": str(builder.info.version),
        "splits": {s: [wanted[s], len(src)] for s, src in sources.items()},
    }

    def load() -> RawTask:
        texts, labels = {}, {}
        for split, source in sources.items():
            rows = _read_all(source)
            where = f"TFDS dataset {name} split {wanted[split]}"
            values = np.asarray([_number(r[label_field], f"{where}, feature {label_field!r}") for r in rows])
            if split == "test" and len(values) and np.all(values == -1):
                continue  # hidden test labels (GLUE): no test split
            texts[split] = [tuple(_text(r[f], f"{where}, feature {f!r}") for f in fields) for r in rows]
            labels[split] = values
        if "validation" not in texts:  # no validation split: 10% of train, by text
            keep = [hash_split("\x1f".join(t), (0.9, 0.1, 0.0)) for t in texts["train"]]
            chosen = np.asarray([k == "validation" for k in keep], bool)
            texts["validation"] = [t for t, c in zip(texts["train"], chosen, strict=True) if c]
            texts["train"] = [t for t, c in zip(texts["train"], chosen, strict=True) if not c]
            labels["validation"], labels["train"] = labels["train"][chosen], labels["train"][~chosen]
        return RawTask(
            name=name,
            texts=texts,
            labels=labels,
            label_names=None if is_regression else class_names,
            metric_names=table.metrics if table else None,
            is_regression=is_regression,
        )

    return parts, fields, load
