"""Sequence-parallel cosine attention (cottention_jax.parallel) on 8 simulated CPU devices.

The device count of a process is fixed when JAX starts, so the computations run
in one worker process per group (tests/_sequence_parallel_worker.py) and each
test here asserts on what it measured: outputs, final states and every gradient
against the single-device op, and the collectives of the compiled program.
"""

import functools
import json
import os
import subprocess
import sys

import pytest

from tests._sequence_parallel_worker import DK, DV, OP_CASES, B, H
from tests._util import REPO_ROOT

ROOT = str(REPO_ROOT)
F32_TOL = 1e-5  # float32 end to end (matmuls pinned to "highest" in the worker, as in conftest.py)


@functools.cache
def _worker(group: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-m", "tests._sequence_parallel_worker", group],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_sharded_sequence_equals_one_device(case):
    errors = _worker("ops")[case]
    assert errors.pop("shard_map") == 1  # it really ran sharded
    assert errors.pop("final_count", 0) == 0
    assert errors.pop("padded_out_max", 0.0) == 0.0  # padded positions output exactly 0
    assert set(errors) >= {"out", "dq", "dk", "dv", "dstabilizer"}
    assert max(errors.values()) <= F32_TOL, errors


@pytest.mark.parametrize("exchange", ["all_gather", "scan"])
@pytest.mark.parametrize("seq", [4, 8])
def test_only_state_sized_collectives_independent_of_length(exchange, seq):
    """Forward + backward exchange d x d states and counts only: every collective is at most
    R x B x H x Dk x Dv float32 (what an all-gather of the states moves), never a shard of keys or
    values (at T = 8192 one device's k alone is 16x that), and the traffic is the same at 4x the length."""
    found = _worker("collectives")
    short, long = found[f"{exchange}-seq{seq}-t2048"], found[f"{exchange}-seq{seq}-t8192"]
    state_gather = seq * B * H * DK * DV * 4
    assert short and all(c["bytes"] <= state_gather for c in long), long
    assert sorted((c["op"], c["bytes"]) for c in short) == sorted((c["op"], c["bytes"]) for c in long)
    ops = {c["op"] for c in long}
    if exchange == "scan":
        assert "collective-permute" in ops
    else:
        assert "all-gather" in ops and "collective-permute" not in ops


def test_scan_moves_fewer_state_bytes_than_all_gather_on_8_devices():
    found = _worker("collectives")
    total = {ex: sum(c["bytes"] for c in found[f"{ex}-seq8-t2048"]) for ex in ("all_gather", "scan")}
    assert total["scan"] < total["all_gather"], total


def test_bad_input_is_refused_with_the_reason():
    messages = _worker("collectives")["bad_input"]
    assert "must be divisible by the 8 devices" in messages["indivisible"]
    assert "(2, 100, 4, 16)" in messages["indivisible"]
    assert "'ctx' is not an axis of the mesh" in messages["no_axis"] and "('data', 'seq')" in messages["no_axis"]
    assert "no mesh is set" in messages["no_mesh"]
    assert "exchange must be one of" in messages["exchange"]


def test_sequence_split_divides_the_activation_memory_of_a_training_step():
    """gpt-tiny at seq 4096: the compiled temporaries per device on a 1 x 8 seq mesh are at most a
    fifth of one device's (ideally an eighth; parameters and their gradients are not split)."""
    memory = _worker("collectives")["step_memory"]
    assert memory["eight"] * 5 <= memory["one"], memory


def test_ops_and_parallel_are_in_no_import_circle():
    """ops dispatches a split sequence to parallel, and parallel runs the one-device op on each shard:
    both build on `_cosine_local`, and parallel never imports ops back."""
    from tests.test_imports import import_circles, import_graph  # noqa: PLC0415

    graph = import_graph()
    assert "cottention_jax.ops" not in graph["cottention_jax.parallel"]
    assert "cottention_jax.ops" not in graph["cottention_jax._cosine_local"]
    assert "cottention_jax.parallel" not in graph["cottention_jax._cosine_local"]
    ours = {"cottention_jax.ops", "cottention_jax.parallel", "cottention_jax._cosine_local"}
    assert [c for c in import_circles(graph) if ours & set(c)] == []
