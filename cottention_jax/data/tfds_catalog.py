"""TFDS datasets as users have them: where they are, how their builders are found, and the error when absent.

Nothing here downloads. A dataset is read where TFDS itself keeps prepared data: `$TFDS_DATA_DIR`,
else `~/tensorflow_datasets`. Without TensorFlow, TFDS finds a catalogue builder only once the
module that defines it is imported (its lazy registry needs TensorFlow), so `import_builder`
imports it first, best-effort.

Quiet: TFDS logs notices through absl while it looks a dataset up ("Variant folder ... has no
dataset_info.json" for every version folder it probes, "Using custom data configuration" for a
dataset read without its builder's code). Reading with `download=False` they are never news: the
dataset is read, or the one-line `not_prepared` error says what is missing. `import_builder`
therefore drops TFDS's own absl records below ERROR (once per process; errors still show). TFDS's
"Downloading and preparing dataset" is printed only by `download_and_prepare`, which nothing here
calls.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path

from cottention_jax.data import paths

__all__ = ["data_dir", "import_builder", "not_prepared", "quiet_tfds_notices"]

_GROUPS = (
    "text",
    "structured",
    "question_answering",
    "summarization",
    "translate",
    "image_classification",
    "image",
    "audio",
    "video",
)


def data_dir() -> Path:
    """Where prepared TFDS datasets are read: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


class _QuietTfds(logging.Filter):
    """Drops the absl records below ERROR that code inside the tensorflow_datasets package logs."""

    def __init__(self, package_dir: str):
        super().__init__()
        self.package_dir = package_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not os.path.realpath(record.pathname).startswith(self.package_dir)


def quiet_tfds_notices(tfds_module) -> None:
    """Install `_QuietTfds` on absl's logger (TFDS logs through it), once per process."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietTfds) for f in logger.filters):
        logger.addFilter(_QuietTfds(os.path.dirname(os.path.realpath(tfds_module.__file__)) + os.sep))


def import_builder(name: str):
    """Import tensorflow_datasets and, best-effort, the module of builder `name` ("glue/sst2" -> glue);
    returns the tfds module, with its notices below ERROR silenced (see the module docstring)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    quiet_tfds_notices(tfds)

    base = name.split("/")[0].split(":")[0]
    for module in (
        f"tensorflow_datasets.datasets.{base}.{base}_dataset_builder",
        *(f"tensorflow_datasets.{group}.{base}" for group in _GROUPS),
    ):
        try:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
                break
        except Exception:  # noqa: BLE001  (a missing parent package, or a builder needing TensorFlow)
            continue
    return tfds


def not_prepared(name: str, detail: str) -> paths.MissingDataError:
    """The one-line error for a TFDS dataset that is not prepared in `data_dir()`."""
    detail = " ".join(detail.split())[:200]
    where = data_dir()
    return paths.MissingDataError(
        f"TFDS dataset {name} is not prepared in {where} ({detail}); nothing is downloaded here: prepare it on a "
        f"machine with network (`tfds build {name} --data_dir {where} --file_format array_record`) and copy that "
        "folder here, or point TFDS_DATA_DIR at where it is"
    )
