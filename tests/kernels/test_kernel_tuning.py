"""Per-kernel launch parameters: the tuned table (format, lookup order, defaults), the tuner, lowering.

The kernels' numerics under every launch are tested in test_pallas_kernels.py
(interpret mode); here: which launch parameters a call gets, that every shipped
configuration lowers to Triton for an H100, and the tuner's logic (its --smoke
mode runs the whole sweep in interpret mode on CPU).
"""

import dataclasses
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.cosine_attn import launch_table, pallas, tune
from tests._util import REPO_ROOT, core_specs, export_for_h100

ROOT = str(REPO_ROOT)
H100 = "NVIDIA H100 80GB HBM3"  # the kind the shipped rows were measured on
# the GPU rows (the TPU rows, "backend": "tpu", are tested in test_pallas_tpu.py)
SHIPPED = [e for e in launch_table.load_table(launch_table.shipped_table_path()) if e.get("backend", "gpu") == "gpu"]


def _device(kind, cc=None):
    return types.SimpleNamespace(device_kind=kind, compute_capability=cc)


def _entry(device, dtype="bfloat16", head_dim=128, block=64, chunk=64, cc=None):
    launch = {"block": block, "num_warps": 4, "num_stages": 2}
    return {
        "device": device,
        "compute_capability": cc,
        "dtype": dtype,
        "head_dim": head_dim,
        "chunk": chunk,
        **{k: dict(launch) for k in launch_table.KERNELS},
    }


@pytest.fixture
def no_user_tables(tmp_path, monkeypatch):
    """Only the shipped table: no $COTTENTION_KERNEL_TABLE, an empty cache directory."""
    monkeypatch.delenv(launch_table.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


# ----------------------------------------------------------------------------- the shipped table


def test_shipped_table_holds_the_h100_sweep():
    rows = {(e["measured_on"], e["dtype"], e["head_dim"]): e for e in SHIPPED}  # every row says where it was measured
    d128, d64 = rows[H100, "bfloat16", 128], rows[H100, "bfloat16", 64]
    # d = 128: the forward is fastest with 32-wide blocks and 3 stages, the backward kernels with 64 / 2
    assert d128["forward"] == {"block": 32, "num_warps": 4, "num_stages": 3}
    assert all(d128[k] == {"block": 64, "num_warps": 4, "num_stages": 2} for k in ("dq", "dk", "dv"))
    assert all(d64[k] == {"block": 32, "num_warps": 4, "num_stages": 3} for k in launch_table.KERNELS)
    for e in SHIPPED:
        sizes = pallas.BlockSizes.from_entry(e)
        assert sizes.to_entry() == {k: e[k] for k in ("chunk", *launch_table.KERNELS)}
        assert e["source"]


@pytest.mark.skipif(
    not hasattr(jax.sharding, "AbstractDevice"),
    reason=f"jax {jax.__version__} has no jax.sharding.AbstractDevice to target an H100",
)
@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: f"{e['dtype']}-d{e['head_dim']}")
def test_every_shipped_config_lowers_for_cuda(entry):
    """Forward and backward with the entry's launches lower to Triton IR for sm_90 (GQA, T = 700)."""
    b, t, h, kv, d, dtype = 2, 700, 4, 2, entry["head_dim"], jnp.dtype(entry["dtype"])
    args = core_specs(b, t, h, kv, d, dtype)
    sizes = dataclasses.replace(pallas.BlockSizes.from_entry(entry), segments=1)

    def loss(q, k, v, w, s0):
        out, final = pallas.causal_linear_attention_pallas(q, k, v, w, s0, block_sizes=sizes)
        return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(final**2)

    module = export_for_h100(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)), *args).mlir_module()
    assert module.count("__gpu$xla.gpu.triton") == 4  # forward, dQ, dK, dV


# ----------------------------------------------------------------------------- defaults and lookup


def test_default_is_the_tuned_entry_on_an_h100_and_its_architecture(no_user_tables):
    tuned = pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=_device(H100, "9.0"))
    assert tuned.forward == pallas.KernelLaunch(32, 4, 3) and tuned.dv == pallas.KernelLaunch(64, 4, 2)
    # another H100 variant matches by name; an H200 (same sm_90) by compute capability; fp16 takes bf16's
    for device in (_device("NVIDIA H100 PCIe"), _device("NVIDIA H200", "9.0")):
        assert pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=device) == tuned
    assert pallas.BlockSizes.get_default(jnp.float16, 96, 128, device=_device(H100, "9.0")) == tuned
    # float32 and an unknown device fall back; d = 64 has its own entry
    assert pallas.BlockSizes.get_default(
        jnp.float32, 128, 128, device=_device(H100, "9.0")
    ) == pallas.BlockSizes.fallback(jnp.float32, 128, 128)
    assert pallas.BlockSizes.get_default(
        jnp.bfloat16, 128, 128, device=_device("NVIDIA A100", "8.0")
    ) == pallas.BlockSizes.fallback(jnp.bfloat16, 128, 128)
    assert pallas.BlockSizes.get_default(jnp.bfloat16, 64, 64, device=_device(H100)).forward.block == 32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("dim", [16, 64, 96, 128, 256])
def test_fallback_uses_four_warps_and_never_spills(dtype, dim):
    sizes = pallas.BlockSizes.fallback(dtype, dim, dim)
    for name in launch_table.KERNELS:
        launch = getattr(sizes, name)
        assert launch.num_warps == 4 and not (launch.num_warps == 2 and launch.block >= 64)
    assert sizes.chunk == (32 if jnp.dtype(dtype) == jnp.float32 and dim >= 256 else 64)


def test_user_tables_take_precedence_in_order(no_user_tables, monkeypatch):
    user = launch_table.write_table(launch_table.user_table_path(), [_entry(H100, block=16)])
    assert launch_table.find_entry(H100, "9.0", "bfloat16", 128)["forward"]["block"] == 16
    env = launch_table.write_table(no_user_tables / "mine.json", [_entry("H100", block=32, chunk=32)])
    monkeypatch.setenv(launch_table.ENV_VAR, str(env))
    found = launch_table.find_entry(H100, "9.0", "bfloat16", 128)  # "H100" is a substring of the kind
    assert found["chunk"] == 32 and launch_table.table_paths()[:2] == [env, user]
    # a head dim neither user table has still comes from the shipped table
    assert launch_table.find_entry(H100, "9.0", "bfloat16", 64)["source"].startswith("block-size sweep")
    assert launch_table.find_entry("cpu", None, "bfloat16", 128) is None


def test_a_kind_missing_from_every_table_takes_a_row_of_its_compute_capability(no_user_tables):
    """Fake device kinds: a row for the device itself, in any table, wins over a same-architecture row
    in an earlier table; a kind no table names takes a row of its compute capability (H100 rows serve
    an H200), and only then the generic launch."""
    h100_d128 = next(e for e in SHIPPED if e["head_dim"] == 128)
    h200, gh200 = _device("NVIDIA H200", "9.0"), _device("NVIDIA GH200 480GB", "9.0")
    assert pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=h200) == pallas.BlockSizes.from_entry(h100_d128)
    # a user table tuned on a GH200 (sm_90 too): the GH200 and the H200 take it; an H100 keeps its own row
    launch_table.write_table(launch_table.user_table_path(), [_entry("NVIDIA GH200 480GB", block=16, cc="9.0")])
    for device in (gh200, h200):
        assert pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=device).forward.block == 16
    h100 = pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=_device(H100, "9.0"))
    assert h100 == pallas.BlockSizes.from_entry(h100_d128)
    # an H200 row of its own beats both; another architecture and no capability get the generic launch
    launch_table.write_table(
        launch_table.user_table_path(),
        [_entry("NVIDIA GH200 480GB", block=16, cc="9.0"), _entry("NVIDIA H200", block=128, cc="9.0")],
    )
    assert pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=h200).forward.block == 128
    for device in (_device("NVIDIA B200", "10.0"), _device("NVIDIA H20", None)):
        assert pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=device) == pallas.BlockSizes.fallback(
            jnp.bfloat16, 128, 128
        )


def test_env_table_naming_a_missing_file_is_an_error(no_user_tables, monkeypatch):
    missing = no_user_tables / "no_such_table.json"
    monkeypatch.setenv(launch_table.ENV_VAR, str(missing))
    with pytest.raises(ValueError, match=rf"{launch_table.ENV_VAR}={missing}: no such file"):
        pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=_device(H100, "9.0"))


@pytest.mark.parametrize("text, match", [('{"format": ', "not valid JSON"), ("[1, 2]", "not a 'cottention-jax")])
def test_env_table_that_is_not_a_table_is_an_error_naming_variable_and_path(no_user_tables, monkeypatch, text, match):
    bad = no_user_tables / "bad.json"
    bad.write_text(text)
    monkeypatch.setenv(launch_table.ENV_VAR, str(bad))
    with pytest.raises(ValueError, match=rf"^{launch_table.ENV_VAR}={bad}: {bad}: {match}") as info:
        pallas.BlockSizes.get_default(jnp.bfloat16, 128, 128, device=_device(H100, "9.0"))
    assert type(info.value) is ValueError  # not a bare JSONDecodeError
    # the same file read directly names its path
    with pytest.raises(ValueError, match=rf"^{bad}: {match}"):
        launch_table.load_table(bad)


def test_caller_block_sizes_override_the_table():
    mine = pallas.BlockSizes.uniform(chunk=32, block=16, num_warps=8, num_stages=1)
    plan = pallas.launch_plan((1, 100, 2, 64), (1, 100, 2, 64), (1, 100, 2, 64), jnp.bfloat16, mine, True)
    assert plan.chunk == 32 and plan.dq == pallas.KernelLaunch(16, 8, 1) and plan.n_chunks == 4


def test_a_long_sequence_gets_segments_per_pass():
    """The forward (blocks of 32: more programs) needs fewer segments than the backward (blocks of 64)."""
    sizes = pallas.BlockSizes(
        forward=pallas.KernelLaunch(32),
        dq=pallas.KernelLaunch(64),
        dk=pallas.KernelLaunch(64),
        dv=pallas.KernelLaunch(64),
    )
    shape = (1, 65536, 16, 128)
    fwd, bwd = (pallas.launch_plan(shape, shape, shape, jnp.bfloat16, sizes, b) for b in (False, True))
    assert fwd.n_segments * 16 * 4 >= 132 and bwd.n_segments * 16 * 2 >= 132
    assert fwd.n_segments < bwd.n_segments


def test_bad_tables_are_refused(tmp_path):
    bad_launch = _entry(H100)
    bad_launch["dq"] = {"block": 64, "num_warps": 4}
    missing = {k: v for k, v in _entry(H100).items() if k != "chunk"}
    for entry, match in ((bad_launch, "'dq' must be an object"), (missing, "missing field 'chunk'")):
        with pytest.raises(ValueError, match=match):
            launch_table.write_table(tmp_path / "t.json", [entry])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else", "version": 1, "entries": []}))
    with pytest.raises(ValueError, match="not a 'cottention-jax kernel table'"):
        launch_table.load_table(other)


def test_merge_replaces_only_matching_entries(tmp_path):
    old = [_entry(H100, head_dim=64), _entry(H100, head_dim=128, block=32)]
    merged = launch_table.merge_entries(old, [_entry(H100, head_dim=128, block=128)])
    path = launch_table.write_table(tmp_path / "t.json", merged)
    rows = {e["head_dim"]: e["forward"]["block"] for e in launch_table.load_table(path)}
    assert rows == {64: 64, 128: 128}


# ----------------------------------------------------------------------------- the tuner


def test_candidates_skip_launches_that_spill():
    launches = tune.candidate_launches(128)
    assert {lo.block for lo in launches} == {32, 64, 128} and {lo.num_stages for lo in launches} == {1, 2, 3}
    assert not any(lo.num_warps == 2 and lo.block >= 64 for lo in launches)
    assert any(lo.num_warps == 2 and lo.block == 32 for lo in launches)
    assert {lo.block for lo in tune.candidate_launches(16)} == {16}
    assert {lo.num_warps for lo in tune.candidate_launches(64, quick=True)} == {4, 8}


def test_best_block_sizes_takes_each_kernels_fastest_launch_at_the_best_chunk():
    a, b = pallas.KernelLaunch(32, 4, 3), pallas.KernelLaunch(64, 4, 2)
    times = {
        (64, "forward", a): 1.0,
        (64, "forward", b): 2.0,
        (64, "dq", a): 3.0,
        (64, "dq", b): 1.0,
        (64, "dk", a): 1.0,
        (64, "dk", b): 1.5,
        (64, "dv", a): 9.0,
        (64, "dv", b): 1.0,
        # chunk 32 is faster for the forward alone but slower in total
        (32, "forward", a): 0.5,
        (32, "dq", a): 2.0,
        (32, "dk", a): 2.0,
        (32, "dv", a): 2.0,
    }
    trials = [tune.Trial(k, c, lo, seconds=s) for (c, k, lo), s in times.items()]
    trials += [
        tune.Trial("dv", 64, pallas.KernelLaunch(128, 8, 3), error="shared memory overflow"),
        tune.Trial("dv", 128, a, seconds=0.1),
    ]  # chunk 128 is incomplete
    sizes, per_kernel = tune.best_block_sizes(trials)
    assert sizes == pallas.BlockSizes(chunk=64, forward=a, dq=b, dk=a, dv=b)
    assert per_kernel == {"forward": 1.0, "dq": 1.0, "dk": 1.0, "dv": 1.0}
    with pytest.raises(ValueError, match="no chunk size has a working launch"):
        tune.best_block_sizes([t for t in trials if t.kernel != "dq"])


def test_a_launch_that_fails_is_recorded_not_raised(monkeypatch):
    real = tune._kernel_call

    def failing(kernel, plan, args, interpret):
        if kernel == "dk" and plan.dk.block == 32:
            raise RuntimeError("out of resource: shared memory, required: 278528, limit: 232448")
        return real(kernel, plan, args, interpret)

    monkeypatch.setattr(tune, "_kernel_call", failing)
    shape = tune.TuneShape(1, 32, 1, 32, "float32")
    launches = [pallas.KernelLaunch(16), pallas.KernelLaunch(32)]
    trials = list(tune.run_trials(shape, [16], launches, interpret=True, warmup=0, repeats=3, max_seconds=0.1))
    assert len(trials) == 8
    failed = [t for t in trials if t.error]
    assert [(t.kernel, t.launch.block) for t in failed] == [("dk", 32)] and "shared memory" in failed[0].error
    assert all(t.seconds > 0 for t in trials if not t.error)
    assert tune.best_block_sizes(trials)[0].dk.block == 16


def test_tuner_smoke_writes_a_table_the_kernels_pick_up(tmp_path):
    """tune_kernels.py --smoke (interpret mode): the sweep, the choice, the check and the table file."""
    out = tmp_path / "table.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "XDG_CACHE_HOME": str(tmp_path)}
    cmd = [
        sys.executable,
        os.path.join(ROOT, "experiments", "tune_kernels.py"),
        "--smoke",
        "--head-dims",
        "16",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (entry,) = launch_table.load_table(out)
    assert (entry["device"], entry["measured_on"], entry["dtype"], entry["head_dim"]) == ("cpu", "cpu", "bfloat16", 16)
    assert entry["measured"]["max_rel_error"] < 2e-2 and entry["measured"]["failed_launches"] == 0
    assert set(entry["measured"]["kernel_ms"]) == set(launch_table.KERNELS)
    assert "kernel chunk block" in done.stdout and f"COTTENTION_KERNEL_TABLE={out}" in done.stdout
    # the kernels read the file named by the environment variable
    probe = (
        "import jax.numpy as jnp; from pallas_kernels.cosine_attn import pallas; "
        "print(pallas.BlockSizes.get_default(jnp.bfloat16, 16, 16).to_entry())"
    )
    read = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**env, launch_table.ENV_VAR: str(out)},
    )
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.strip() == str(pallas.BlockSizes.from_entry(entry).to_entry())
