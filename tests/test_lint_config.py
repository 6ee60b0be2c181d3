"""The lint set-up cannot rot silently: pyproject.toml selects the agreed rule families at 120
columns, `make test` runs `make lint` (ruff check, ruff format --check, mypy) before the suite, and
the installed ruff and mypy really flag planted mistakes with that configuration."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests._util import REPO_ROOT

PYPROJECT = REPO_ROOT / "pyproject.toml"
BIN = Path(sys.executable).parent  # the suite's venv: ruff and mypy come with [test]

# Each line plants one finding; the comment names the code ruff must report for it.
PLANTED = (
    '''\
import sys
import os  # I001: os after sys


def adders():
    fns = []
    for i in range(3):
        fns.append(lambda x: x + i)  # B023: the lambda sees the last i, not this one
    return fns


def pairs(a, b):
    return list(zip(a, b))  # B905: no strict=


LONG = "'''
    + "x" * 110
    + """"  # E501
print(sys.path, os.sep)
"""
)

# The same code written the way the rules ask: nothing to report.
TIDY = """\
import os
import sys


def adders():
    return [lambda x, i=i: x + i for i in range(3)]


def pairs(a, b):
    return list(zip(a, b, strict=True))


print(sys.path, os.sep)
"""


def _ruff(path: Path) -> set[str]:
    """The rule codes `ruff check` reports for `path` under the project's configuration."""
    done = subprocess.run(
        [str(BIN / "ruff"), "check", "--config", str(PYPROJECT), "--no-cache", "--output-format", "concise", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert done.returncode in (0, 1), done.stderr  # 2: ruff itself failed (bad config, ...)
    return {line.split(": ", 1)[1].split()[0] for line in done.stdout.splitlines() if line.startswith(str(path))}


def test_pyproject_selects_the_agreed_rules_at_120_columns():
    config = tomllib.loads(PYPROJECT.read_text())
    ruff = config["tool"]["ruff"]
    assert ruff["line-length"] == 120
    assert sorted(ruff["lint"]["select"]) == sorted(["E", "F", "W", "B", "I", "UP"])
    assert not ruff["lint"].get("ignore"), "ignore a finding per line, with its reason, not for the whole tree"
    assert set(config["tool"]["mypy"]["files"]) == {"cottention_jax", "pallas_kernels"}


def test_make_test_runs_lint_before_the_suite():
    done = subprocess.run(["make", "-n", "test"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def first(fragment: str) -> int:
        found = [n for n, line in enumerate(lines) if fragment in line]
        assert found, f"`make -n test` never runs {fragment!r}:\n{done.stdout}"
        return found[0]

    lint = [first("ruff check ."), first("ruff format --check ."), first("bin/mypy")]
    assert max(lint) < first("-m pytest"), done.stdout


def test_ruff_flags_the_planted_mistakes_and_passes_tidy_code(tmp_path):
    planted, tidy = tmp_path / "planted.py", tmp_path / "tidy.py"
    planted.write_text(PLANTED)
    tidy.write_text(TIDY)
    assert _ruff(planted) == {"I001", "B023", "B905", "E501"}
    assert _ruff(tidy) == set()


@pytest.mark.parametrize(
    "source, flagged", [("def f() -> int:\n    return 'one'\n", True), ("def f() -> int:\n    return 1\n", False)]
)
def test_mypy_checks_annotated_code_with_the_project_config(tmp_path, source, flagged):
    path = tmp_path / "typed.py"
    path.write_text(source)
    done = subprocess.run(
        [str(BIN / "mypy"), "--config-file", str(PYPROJECT), "--cache-dir", str(tmp_path / "cache"), str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == (1 if flagged else 0), done.stdout + done.stderr
    assert ("Incompatible return value type" in done.stdout) == flagged, done.stdout
