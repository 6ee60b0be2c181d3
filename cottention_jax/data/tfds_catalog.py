"""TFDS datasets as users have them: where they are, how their builders are found, and the error when absent.

Nothing here downloads. A dataset is read where TFDS itself keeps prepared data: `$TFDS_DATA_DIR`,
else `~/tensorflow_datasets`. Without TensorFlow, TFDS finds a catalogue builder only once the
module that defines it is imported (its lazy registry needs TensorFlow), so `import_builder`
imports it first, best-effort.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from cottention_jax.data import paths

__all__ = ["data_dir", "import_builder", "not_prepared"]

_GROUPS = ("text", "structured", "question_answering", "summarization", "translate", "image_classification",
           "image", "audio", "video")


def data_dir() -> Path:
    """Where prepared TFDS datasets are read: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def import_builder(name: str):
    """Import tensorflow_datasets and, best-effort, the module of builder `name` ("glue/sst2" -> glue);
    returns the tfds module."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    base = name.split("/")[0].split(":")[0]
    for module in (f"tensorflow_datasets.datasets.{base}.{base}_dataset_builder",
                   *(f"tensorflow_datasets.{group}.{base}" for group in _GROUPS)):
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
        "folder here, or point TFDS_DATA_DIR at where it is")
