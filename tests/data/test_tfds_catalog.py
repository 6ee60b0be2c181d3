"""TFDS lookups are quiet: reading a dataset shows nothing of TFDS's own, and a dataset that is not
prepared is our one line, without TFDS's notices about the folders it probed (tfds_catalog)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from cottention_jax.data import classification, open_source, tfds_catalog
from cottention_jax.data.tokenization import ByteTokenizer
from tests.data._fixtures import offline_tfds


def _tfds_notices(records) -> list[str]:
    """The messages below ERROR that code inside tensorflow_datasets logged."""
    return [
        f"{r.levelname}: {r.getMessage()}"
        for r in records
        if f"{os.sep}tensorflow_datasets{os.sep}" in r.pathname and r.levelno < logging.ERROR
    ]


def test_reading_datasets_under_mock_data_logs_no_tfds_notice(tmp_path, monkeypatch, caplog):
    tfds, _ = offline_tfds(tmp_path, monkeypatch)
    with (
        caplog.at_level(logging.DEBUG, logger="absl"),
        tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE),
    ):
        source = open_source("tfds:lm1b")
        task = classification.prepare_task("tfds:glue/mrpc", ByteTokenizer(), data_dir=tmp_path / "data")
    assert sorted(source.tfds_splits) == ["train", "validation"] and task.split_sizes["train"] == 5
    assert not _tfds_notices(caplog.records)


def test_a_dataset_that_is_not_prepared_is_one_line_and_nothing_else(tmp_path):
    env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "COTTENTION_DATA_DIR": str(tmp_path / "data")}
    for corpus in ("tfds:lm1b", "tfds:glue/mrpc"):
        result = subprocess.run(
            [sys.executable, "-m", "cottention_jax.data_cli", "info", corpus],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert result.returncode != 0 and result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "is not prepared in" in lines[0] and corpus[5:] in lines[0], result.stderr


def test_the_filter_keeps_errors_and_other_loggers_records(tmp_path, monkeypatch):
    tfds, _ = offline_tfds(tmp_path, monkeypatch)
    tfds_catalog.quiet_tfds_notices(tfds)
    tfds_catalog.quiet_tfds_notices(tfds)  # once per process, however often it is called
    absl = logging.getLogger("absl")
    quiet = [f for f in absl.filters if isinstance(f, tfds_catalog._QuietTfds)]
    assert len(quiet) == 1
    inside = os.path.join(os.path.dirname(tfds.__file__), "core", "dataset_builder.py")

    def record(level, pathname):
        return logging.LogRecord("absl", level, pathname, 1, "a notice", None, None)

    assert not quiet[0].filter(record(logging.WARNING, inside))
    assert not quiet[0].filter(record(logging.INFO, inside))
    assert quiet[0].filter(record(logging.ERROR, inside))
    assert quiet[0].filter(record(logging.WARNING, str(tmp_path / "my_code.py")))


@pytest.fixture(autouse=True)
def _no_filter_from_an_earlier_test():
    """Each test starts without the filter, so that the first one shows that reading installs it."""
    absl = logging.getLogger("absl")
    for f in [f for f in absl.filters if isinstance(f, tfds_catalog._QuietTfds)]:
        absl.removeFilter(f)
    yield
