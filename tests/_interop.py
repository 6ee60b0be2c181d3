"""The PyTorch side of the converter tests: a Python 3.11 virtual environment with torch (CPU) and
transformers, built once into `.venv-interop/` (gitignored) from the package index and pip's cache,
and the fixture that runs `tests/_hf_checkpoints.py` there.

The interpreter: $COTTENTION_INTEROP_PYTHON, else `python3.11`, else `python3` when it is 3.11.
Without one, or when pip cannot install `tests/requirements-interop.txt`, the tests that need it
are skipped with the reason. No model, tokenizer or dataset is downloaded: the script builds
small random-initialised models from their configs, offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-interop"
REQUIREMENTS = ROOT / "tests" / "requirements-interop.txt"
SCRIPT = ROOT / "tests" / "_hf_checkpoints.py"


def _python311() -> str | None:
    candidates = [os.environ.get("COTTENTION_INTEROP_PYTHON"), "python3.11", "python3"]
    for candidate in filter(None, candidates):
        exe = shutil.which(candidate) or candidate
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "True":
            return exe
    return None


def interop_python() -> Path:
    """The interop environment's python, built on first use (a file lock keeps parallel workers apart)."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".installed"
    python = VENV / "bin" / "python"
    VENV.parent.mkdir(exist_ok=True)
    with open(ROOT / ".venv-interop.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == wanted and python.exists():
            return python
        base = _python311()
        if base is None:
            pytest.skip(
                "the converter tests need a Python 3.11 interpreter (python3.11, or "
                "$COTTENTION_INTEROP_PYTHON) for the CPU build of torch"
            )
        shutil.rmtree(VENV, ignore_errors=True)
        steps = [
            [base, "-m", "venv", str(VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
            if done.returncode:
                pytest.skip(
                    f"could not build {VENV.name} ({' '.join(step[:4])}...): "
                    f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}"
                )
        stamp.write_text(wanted)
    return python


def run_interop(*args) -> str:
    """Run tests/_hf_checkpoints.py in the interop environment; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="2",
    )
    done = subprocess.run(
        [str(interop_python()), str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )
    if done.returncode:
        raise AssertionError(
            f"{SCRIPT.name} {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """A folder of random-initialised transformers checkpoints (fresh seed each session) with the
    inputs and the logits transformers computes on them; see tests/_hf_checkpoints.py."""
    out = tmp_path_factory.mktemp("hf")
    seed = int.from_bytes(os.urandom(3), "little")
    run_interop("build", out, seed)
    print(f"hf_checkpoints: seed {seed}", file=sys.stderr)
    return out
