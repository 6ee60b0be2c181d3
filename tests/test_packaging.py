"""The package as a user gets it: the sdist, the wheel built from it, and that wheel installed into a
fresh virtual environment outside the checkout (its dependencies from the package index, through
pip's cache), where a tiny training run, a generate call and the op run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests._util import REPO_ROOT

ROOT = REPO_ROOT
SHIPPED = [
    "cottention_jax/data/shipped/shakespeare/shakespeare.jsonl.gz",
    "cottention_jax/data/shipped/shakespeare/SHA256SUMS",
    "cottention_jax/data/shipped/shakespeare/PROVENANCE.md",
    "cottention_jax/data/shipped/shakespeare/LICENCE.md",
    "cottention_jax/data/shipped/tokenizers/shakespeare-bpe-4096.json",
    "cottention_jax/data/shipped/tokenizers/shakespeare-wordpiece-4096.json",
    "cottention_jax/data/shipped/tokenizers/shakespeare-bpe-512.json",
    "cottention_jax/data/shipped/tokenizers/shakespeare-wordpiece-512.json",
    "cottention_jax/data/shipped/tokenizers/SHA256SUMS",
    "pallas_kernels/cosine_attn/tuned_block_sizes.json",
]
TRAIN_ONLY = ("tensorflow_datasets", "array_record", "tensorboardX", "matplotlib")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)
    if done.returncode:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel): the sdist of the checkout, and the wheel pip builds from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT])
    (sdist,) = out.glob("*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, sdist])
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_sdist_and_wheel_hold_the_data_licence_and_entry_points(dist):
    sdist, wheel = dist
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for name in ["LICENSE", "README.md", "MANIFEST.in", "setup.cfg", "pyproject.toml", *SHIPPED]:
        assert name in in_sdist, name
    assert not any(n.startswith(("tests/", "notebooks/", "experiments/")) for n in in_sdist)
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        for name in SHIPPED:  # the bytes shipped are the repository's, so their checksums hold
            assert whl.read(name) == (ROOT / name).read_bytes(), name
    licence = next(n for n in names if n.startswith(f"{info}/") and n.endswith("LICENSE"))
    with zipfile.ZipFile(wheel) as whl:
        assert "Apache License" in whl.read(licence).decode() and "Apache-2.0" in metadata
    assert "cottention-train = cottention_jax.cli:train_main" in entry_points
    assert "cottention-generate = cottention_jax.cli:generate_main" in entry_points
    assert "cottention-data = cottention_jax.data_cli:main" in entry_points
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    train = [r for r in requires if 'extra == "train"' in r]
    heavy = ("tensorflow-datasets", "array-record", "tensorboardX", "matplotlib")
    assert not any(h in r for h in heavy for r in base), base
    assert all(any(h in r for r in train) for h in heavy), train


# What the fresh environment runs with only the base install: the op against a float64 NumPy
# version of the specification, the models, decoding and converters importable, the shipped data
# readable, and none of the training-only packages present or imported.
_BASE_CHECK = r"""
import importlib.util, json, sys
import numpy as np
import jax, jax.numpy as jnp
import cottention_jax as ca
from cottention_jax import decoding, inference, interop, layers, models
from cottention_jax.data import get_tokenizer, load_embedded_corpus

rng = np.random.default_rng(int(sys.argv[1]))
train_only = sys.argv[2].split(",")
B, T, H, D = 2, 37, 3, 8
q, k, v = (rng.standard_normal((B, T, H, D)) for _ in range(3))
m = rng.standard_normal(H)
out = np.asarray(ca.cosine_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, m)), causal=True))
unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
scores = np.einsum("bthd,bshd->bhts", unit(q), unit(k)) * np.tril(np.ones((T, T)))
n = np.arange(1, T + 1, dtype=np.float64)
scaled = v / (n[None, :, None, None] ** (1 / (1 + np.exp(-m)))[None, None, :, None])
ref = np.einsum("bhts,bshd->bthd", scores, scaled)
tokenizer = get_tokenizer("bpe")
print(json.dumps({
    "package": ca.__file__,
    "op_error": float(np.linalg.norm(out - ref) / np.linalg.norm(ref)),
    "documents": len(load_embedded_corpus()),
    "round_trip": tokenizer.decode(tokenizer.encode("ROMEO: a rose")) == "ROMEO: a rose",
    "installed": [name for name in train_only if importlib.util.find_spec(name) is not None],
    "imported": [name for name in train_only if name in sys.modules],
}))
"""

# With [train]: greedy decoding of the trained model from the installed wheel equals a loop of
# full forward passes taking the argmax (the parallel form, not the RNN path generate uses).
_GREEDY_CHECK = r"""
import json, sys
import jax.numpy as jnp
from cottention_jax import inference
model = inference.load_model(sys.argv[1])
tokens = jnp.asarray([inference.load_tokenizer(sys.argv[1]).encode("ROMEO:")], jnp.int32)
for _ in range(int(sys.argv[2])):
    tokens = jnp.concatenate([tokens, jnp.argmax(model(tokens)[:, -1], -1)[:, None].astype(jnp.int32)], 1)
print(json.dumps(tokens[0, -int(sys.argv[2]):].tolist()))
"""


@pytest.mark.slow
def test_the_wheel_trains_generates_and_runs_the_op_in_a_fresh_environment(dist, tmp_path):
    _, wheel = dist
    venv = tmp_path / "venv"
    assert ROOT not in venv.parents and ROOT not in tmp_path.parents
    _run([sys.executable, "-m", "venv", venv])
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        COTTENTION_DATA_DIR=str(tmp_path / "data"),
        JAX_PLATFORMS="cpu",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    python = bin_dir / "python"
    run = lambda *cmd, **kw: _run(cmd, cwd=tmp_path, env=env, **kw)  # noqa: E731  (outside the checkout)
    run(python, "-m", "pip", "install", "--quiet", wheel)

    seed = int.from_bytes(os.urandom(2), "little")
    base = json.loads(run(python, "-c", _BASE_CHECK, seed, ",".join(TRAIN_ONLY)).stdout.strip().splitlines()[-1])
    assert Path(base["package"]).is_relative_to(venv), base["package"]
    assert base["op_error"] < 1e-5, (seed, base["op_error"])
    assert base["documents"] == 42 and base["round_trip"]
    assert base["installed"] == [] and base["imported"] == []
    refused = subprocess.run(
        [bin_dir / "cottention-train", "--preset", "gpt-tiny", "--workdir", tmp_path / "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert refused.returncode != 0 and 'pip install "cottention-jax[train]"' in refused.stderr, refused.stderr

    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[train]")
    workdir = tmp_path / "run"
    run(
        bin_dir / "cottention-train",
        "--preset",
        "gpt-tiny",
        "--workdir",
        workdir,
        "--no-progress",
        "--set",
        "steps=4",
        "--set",
        "eval_every=2",
        "--set",
        "checkpoint_every=2",
        "--set",
        "log_every=2",
        "--set",
        "sample_tokens=4",
    )
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_eval"]["loss"] > 0
    assert (workdir / "training.png").stat().st_size > 1000 and (workdir / "sample.txt").read_text()
    assert not (tmp_path / "data" / "tokenizers").exists()  # the tiny preset's tokenizer ships
    info = json.loads(run(bin_dir / "cottention-data", "info", "shakespeare", "--preset", "gpt-tiny").stdout)
    assert info["splits"]["train"]["documents"] == 38 and info["tokenizer"]["vocab_size"] == 512

    steps = 6
    generated = (
        run(
            bin_dir / "cottention-generate",
            "--workdir",
            workdir,
            "--prompt",
            "ROMEO:",
            "--json",
            "--no-stop",
            "--max-new-tokens",
            steps,
        )
        .stdout.strip()
        .splitlines()
    )
    record = json.loads(generated[-1])
    assert record["prompt"] == "ROMEO:" and len(record["tokens"]) == steps
    assert record["tokens"] == json.loads(run(python, "-c", _GREEDY_CHECK, workdir, steps).stdout.strip())
