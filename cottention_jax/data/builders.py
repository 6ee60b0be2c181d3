"""Pre-tokenised datasets as TensorFlow Datasets local builders (array_record, no TensorFlow).

Two `tfds.core.GeneratorBasedBuilder`s read local files only (nothing downloads):

- `CottentionText` (`cottention_text/<corpus>_<kind><vocab>`): one example per
  document, {"doc_id", "title", "group", "tokens": (L,) int32}; splits "train" and
  "validation" by document group (`corpus.split_documents`).
- `CottentionTask` (`cottention_task/<task>_<corpus>_<kind><vocab>`): one example
  per labelled example, {"index", "text_a", "text_b", "ids_a": (La,) int32,
  "ids_b": (Lb,) int32, "label"}; splits "train", "validation", "test".

Both write `array_record` shards under `<data_dir>/tfds/`, store the tokenizer's
JSON in the dataset metadata (so a dataset always decodes with the tokenizer it
was made with), and are read back with `tfds.data_source`, which needs no
TensorFlow. `load_text_dataset` / `load_task_dataset` build on first use (seconds
for the default Shakespeare dataset), verify the shards against SHA256SUMS, check
that the dataset was made from the current records file and tokenizer (else it
is out of date and the error says how to rebuild it), and return the token
arrays in memory, in a fixed order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cottention_jax.data import corpus as corpus_lib
from cottention_jax.data import paths
from cottention_jax.data import tasks as tasks_lib
from cottention_jax.data import tokenization

__all__ = [
    "CottentionTask",
    "CottentionText",
    "TaskConfig",
    "TaskDataset",
    "TaskSplit",
    "TextConfig",
    "TextDataset",
    "load_task_dataset",
    "load_text_dataset",
]

_VERSION = "1.0.0"


@dataclasses.dataclass
class TextConfig(tfds.core.BuilderConfig):
    """Which corpus and tokenizer; source_dir is the data dir holding corpora and tokenizers."""

    corpus: str = "shakespeare"
    tokenizer_kind: str = "bpe"
    vocab_size: int = 4096
    source_dir: str = ""


@dataclasses.dataclass
class TaskConfig(tfds.core.BuilderConfig):
    """Which task, and the tokenizer (corpus, kind, vocab_size) it is encoded with."""

    task: str = "sentiment"
    corpus: str = "shakespeare"
    tokenizer_kind: str = "wordpiece"
    vocab_size: int = 4096
    source_dir: str = ""


def _tokenizer_for(config) -> tokenization.Tokenizer:
    return tokenization.get_tokenizer(config.tokenizer_kind, config.corpus, config.vocab_size,
                                      config.source_dir)


def _source_fingerprint(config, tokenizer: tokenization.Tokenizer) -> dict[str, str]:
    """SHA-256 of what a dataset is made from: the records file (per its SHA256SUMS) and the
    tokenizer JSON. A dataset whose fingerprint differs from the current one is out of date."""
    if isinstance(config, TaskConfig):
        directory, name = tasks_lib.task_dir(config.task, config.source_dir), f"{config.task}.jsonl.gz"
        rebuild = tasks_lib.task_rebuild_command(config.task, config.source_dir)
    else:
        directory = corpus_lib.corpus_dir(config.corpus, config.source_dir)
        name, rebuild = f"{config.corpus}.jsonl.gz", corpus_lib.rebuild_command(config.corpus, config.source_dir)
    return {"records": paths.read_checksums(directory, rebuild)[name],
            "tokenizer": hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()}


def _check_up_to_date(config, source, dataset_dir: Path, rebuild: str) -> None:
    built = dict(source.dataset_info.metadata.get("sources") or {})
    current = _source_fingerprint(config, _tokenizer_for(config))
    stale = [key for key in current if built.get(key) != current[key]]
    if stale:
        raise paths.stale(dataset_dir, f"built from another version of its {' and '.join(stale)}",
                          rebuild)


class CottentionText(tfds.core.GeneratorBasedBuilder):
    """Documents of a corpus as token-id sequences, split by document."""

    VERSION = tfds.core.Version(_VERSION)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Pre-tokenised documents of a cottention_jax corpus (one per work).",
            features=tfds.features.FeaturesDict({
                "doc_id": tfds.features.Text(),
                "title": tfds.features.Text(),
                "group": tfds.features.Text(),
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        documents = corpus_lib.load_corpus(cfg.corpus, cfg.source_dir)
        tokenizer = _tokenizer_for(cfg)
        self.info.metadata.update(tokenizer_json=tokenizer.to_json(), corpus=cfg.corpus,
                                  sources=_source_fingerprint(cfg, tokenizer))
        split = corpus_lib.split_documents(documents)
        return {name: self._generate_examples(docs, tokenizer) for name, docs in split.items()}

    def _generate_examples(self, documents, tokenizer):
        token_lists = tokenizer.encode_batch([d.text for d in documents])
        for document, tokens in zip(documents, token_lists):
            yield document.doc_id, {"doc_id": document.doc_id, "title": document.title,
                                    "group": document.group,
                                    "tokens": np.asarray(tokens, np.int32)}


class CottentionTask(tfds.core.GeneratorBasedBuilder):
    """Labelled single-sentence or sentence-pair examples, pre-tokenised."""

    VERSION = tfds.core.Version(_VERSION)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Pre-tokenised labelled examples of a cottention_jax task.",
            features=tfds.features.FeaturesDict({
                "index": tfds.features.Scalar(dtype=np.int64),
                "text_a": tfds.features.Text(),
                "text_b": tfds.features.Text(),
                "ids_a": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "ids_b": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "label": tfds.features.ClassLabel(names=tasks_lib.TASK_LABELS[self.builder_config.task]),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        examples = tasks_lib.load_task_examples(cfg.task, cfg.source_dir)
        tokenizer = _tokenizer_for(cfg)
        self.info.metadata.update(tokenizer_json=tokenizer.to_json(), task=cfg.task,
                                  sources=_source_fingerprint(cfg, tokenizer))
        by_split = {name: [] for name in tasks_lib.TASK_SPLITS}
        for index, example in enumerate(examples):
            by_split[example["split"]].append((index, example))
        return {name: self._generate_examples(items, tokenizer) for name, items in by_split.items()}

    def _generate_examples(self, items, tokenizer):
        ids_a = tokenizer.encode_batch([e["text_a"] for _, e in items])
        ids_b = tokenizer.encode_batch([e["text_b"] for _, e in items])
        for (index, example), a, b in zip(items, ids_a, ids_b):
            yield index, {"index": index, "text_a": example["text_a"], "text_b": example["text_b"],
                          "ids_a": np.asarray(a, np.int32), "ids_b": np.asarray(b, np.int32),
                          "label": int(example["label"])}


# ---------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """A tokenised corpus in memory.

    documents[split]: list of (L_i,) int32 token arrays, sorted by doc_id;
    doc_ids[split]: the matching doc_ids. Splits: "train", "validation".
    """

    name: str
    path: Path
    tokenizer: tokenization.Tokenizer
    documents: dict[str, list[np.ndarray]]
    doc_ids: dict[str, list[str]]

    @property
    def train(self) -> list[np.ndarray]:
        return self.documents["train"]

    @property
    def validation(self) -> list[np.ndarray]:
        return self.documents["validation"]

    def num_tokens(self, split: str) -> int:
        return int(sum(len(d) for d in self.documents[split]))


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """One split of a labelled task: ids_a[i], ids_b[i] (empty for single sentences), labels (N,) int32."""

    ids_a: list[np.ndarray]
    ids_b: list[np.ndarray]
    labels: np.ndarray
    texts_a: list[str]
    texts_b: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class TaskDataset:
    """A tokenised labelled task: splits "train", "validation", "test"."""

    task: str
    path: Path
    tokenizer: tokenization.Tokenizer
    label_names: tuple[str, ...]
    is_pair: bool
    splits: dict[str, TaskSplit]


def _prepare(builder_cls, config, tfds_dir: Path, dataset_dir: Path) -> None:
    """download_and_prepare (local files only), then checksum every file it wrote."""
    builder = builder_cls(config=config, data_dir=str(tfds_dir), file_format="array_record")
    builder.download_and_prepare(
        download_dir=str(tfds_dir / "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    names = [p.name for p in dataset_dir.iterdir() if p.is_file() and p.name != paths.CHECKSUM_FILE]
    paths.write_checksums(dataset_dir, names)


def _prepare_command(script: str, *options: str, rebuild: bool = False) -> str:
    """The shell command that (re)builds a dataset; every value is quoted (`shlex.quote`), so a path
    with spaces or shell characters stays one argument. --rebuild deletes the dataset and builds it
    again by itself: no `rm` for anyone to paste."""
    flags = ["--prepare", *(["--rebuild"] if rebuild else []), *options]
    return shlex.join(["python", f"experiments/{script}", *flags])


def _open_sources(builder_cls, config, tfds_dir: Path, dataset_dir: Path, build: bool,
                  command: str, rebuild: str, fresh: bool = False) -> dict:
    """{split: tfds data source}, building first when absent (or when `fresh`: deleted and built
    again); errors name `command` (builds) or `rebuild` (rebuilds)."""
    if fresh and not build:
        raise ValueError("rebuild=True builds the dataset again: it needs build=True")
    if fresh and dataset_dir.is_dir():
        shutil.rmtree(dataset_dir)
    if not dataset_dir.is_dir():
        if not build:
            raise paths.missing(dataset_dir, command)
        _prepare(builder_cls, config, tfds_dir, dataset_dir)
    paths.verify_checksums(dataset_dir, rebuild)
    try:
        return tfds.data_source(builder_cls.name, split=None, data_dir=str(tfds_dir),
                                download=False,
                                builder_kwargs={"config": config, "file_format": "array_record"})
    except Exception as err:  # TFDS/array_record raise many types for damaged files
        raise paths.corrupt(dataset_dir, f"{type(err).__name__}: {err}", rebuild) from err


def _read_all(source, dataset_dir: Path, rebuild: str) -> list[dict]:
    try:
        return list(source.__getitems__(list(range(len(source))))) if len(source) else []
    except Exception as err:
        raise paths.corrupt(dataset_dir, f"{type(err).__name__}: {err}", rebuild) from err


def _tokenizer_from_metadata(source) -> tokenization.Tokenizer:
    return tokenization._parse_tokenizer_json(source.dataset_info.metadata["tokenizer_json"])


def _dataset_dir(tfds_dir: Path, builder_cls, config_name: str) -> Path:
    return tfds_dir / builder_cls.name / config_name / _VERSION


def _config_args(tokenizer: str, vocab_size: int | None, data_dir) -> tuple[int, Path]:
    if tokenizer not in tokenization.KINDS:
        raise ValueError(f"tokenizer must be one of {tokenization.KINDS}, got {tokenizer!r}")
    vocab_size = tokenization.DEFAULT_VOCAB_SIZE[tokenizer] if vocab_size is None else int(vocab_size)
    root = paths.resolve_data_dir(data_dir)
    return vocab_size, root


def load_text_dataset(corpus: str = "shakespeare", tokenizer: str = "bpe",
                      vocab_size: int | None = None, data_dir=None, build: bool = True,
                      rebuild: bool = False) -> TextDataset:
    """The tokenised corpus, built as a TFDS dataset under `<data_dir>/tfds/` on first use.

    corpus: "shakespeare" (ships) or "mixed" (build it first with build_corpus.py --mixed);
    tokenizer: "bpe" | "wordpiece" | "byte". build=False raises MissingDataError instead
    of building; rebuild=True deletes the dataset and builds it again. A damaged dataset
    raises CorruptDataError with the command that rebuilds it (build_corpus.py --rebuild).
    """
    if corpus not in corpus_lib.CORPORA:
        raise ValueError(f"corpus must be one of {corpus_lib.CORPORA}, got {corpus!r}")
    vocab_size, root = _config_args(tokenizer, vocab_size, data_dir)
    config = TextConfig(name=f"{corpus}_{tokenizer}{vocab_size}", corpus=corpus,
                        tokenizer_kind=tokenizer, vocab_size=vocab_size, source_dir=str(root))
    tfds_dir = root / "tfds"
    dataset_dir = _dataset_dir(tfds_dir, CottentionText, config.name)
    options = ("--corpus", corpus, "--tokenizer", tokenizer, "--vocab-size", str(vocab_size),
               "--data-dir", str(root.absolute()))
    command = _prepare_command("build_corpus.py", *options)
    hint = _prepare_command("build_corpus.py", *options, rebuild=True)
    sources = _open_sources(CottentionText, config, tfds_dir, dataset_dir, build, command, hint, fresh=rebuild)
    _check_up_to_date(config, sources["train"], dataset_dir, hint)
    documents, doc_ids = {}, {}
    for split in ("train", "validation"):
        records = sorted(_read_all(sources[split], dataset_dir, hint), key=lambda r: r["doc_id"])
        doc_ids[split] = [r["doc_id"].decode("utf-8") for r in records]
        documents[split] = [np.asarray(r["tokens"], np.int32) for r in records]
    return TextDataset(name=config.name, path=dataset_dir,
                       tokenizer=_tokenizer_from_metadata(sources["train"]),
                       documents=documents, doc_ids=doc_ids)


def load_task_dataset(task: str = "sentiment", corpus: str = "shakespeare",
                      tokenizer: str = "wordpiece", vocab_size: int | None = None,
                      data_dir=None, build: bool = True, rebuild: bool = False) -> TaskDataset:
    """A tokenised labelled task (build the raw task first with experiments/build_tasks.py).

    The tokenizer is the one of (tokenizer, corpus, vocab_size), normally the
    WordPiece vocabulary the BERT model was pretrained with. rebuild=True deletes the
    dataset and builds it again (what build_tasks.py --prepare --rebuild does).
    """
    if task not in tasks_lib.TASKS:
        raise ValueError(f"task must be one of {tasks_lib.TASKS}, got {task!r}")
    vocab_size, root = _config_args(tokenizer, vocab_size, data_dir)
    config = TaskConfig(name=f"{task}_{corpus}_{tokenizer}{vocab_size}", task=task, corpus=corpus,
                        tokenizer_kind=tokenizer, vocab_size=vocab_size, source_dir=str(root))
    tfds_dir = root / "tfds"
    dataset_dir = _dataset_dir(tfds_dir, CottentionTask, config.name)
    options = ("--task", task, "--corpus", corpus, "--tokenizer", tokenizer, "--vocab-size", str(vocab_size),
               "--data-dir", str(root.absolute()))
    command = _prepare_command("build_tasks.py", *options)
    hint = _prepare_command("build_tasks.py", *options, rebuild=True)
    sources = _open_sources(CottentionTask, config, tfds_dir, dataset_dir, build, command, hint, fresh=rebuild)
    _check_up_to_date(config, sources["train"], dataset_dir, hint)
    splits = {}
    for split in tasks_lib.TASK_SPLITS:
        records = sorted(_read_all(sources[split], dataset_dir, hint), key=lambda r: int(r["index"]))
        splits[split] = TaskSplit(
            ids_a=[np.asarray(r["ids_a"], np.int32) for r in records],
            ids_b=[np.asarray(r["ids_b"], np.int32) for r in records],
            labels=np.asarray([int(r["label"]) for r in records], np.int32),
            texts_a=[r["text_a"].decode("utf-8") for r in records],
            texts_b=[r["text_b"].decode("utf-8") for r in records])
    is_pair = any(len(b) for s in splits.values() for b in s.ids_b)
    return TaskDataset(task=task, path=dataset_dir,
                       tokenizer=_tokenizer_from_metadata(sources["train"]),
                       label_names=tasks_lib.TASK_LABELS[task], is_pair=is_pair, splits=splits)
