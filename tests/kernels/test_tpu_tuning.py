"""The TPU path of the measuring scripts, on the CPU: benchmarks/bench_kernels.py and
experiments/tune_kernels.py with `--smoke --platform tpu` (the Mosaic kernels in TPU interpret mode,
tiny shapes, two launches), called in-process through their `main`.

  * bench_kernels: pallas (the TPU kernels) and xla timed and checked at the same shapes, the
    GPU-only rows skipped with a printed reason, the pallas-vs-xla comparison printed and saved;
  * tune_kernels: the sweep, the check against the reference, a `"backend": "tpu"` row merged
    into the table, and `TpuBlockSizes.get_default` reading it for the device kind it names;
  * users' mistakes (a bad option, a CPU without --smoke): one line and a non-zero exit.
What they measure on a real TPU is not tested here: no TPU has been available to this project.
"""

import importlib.util
import json
import types

import pytest

from benchmarks import bench_kernels
from pallas_kernels.cosine_attn import launch_table, pallas_tpu, tune
from tests._util import REPO_ROOT

Sizes = pallas_tpu.TpuBlockSizes


def _load_tune_kernels():
    spec = importlib.util.spec_from_file_location("tune_kernels", REPO_ROOT / "experiments" / "tune_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tune_kernels = _load_tune_kernels()


@pytest.fixture
def own_tables(tmp_path, monkeypatch):
    """No $COTTENTION_KERNEL_TABLE and an empty cache directory: only the shipped table is read."""
    monkeypatch.delenv(launch_table.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _one_line_exit(info, capsys) -> str:
    """The message of a script's exit: sys.exit(message), or an argparse error on stderr (rc 2)."""
    code = info.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err
    assert code != 0 and message.strip() and "\n" not in message.strip() and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------- the smoke runs


def test_bench_kernels_smoke_times_tpu_kernels_against_xla(tmp_path, own_tables, capsys):
    out = tmp_path / "bench.json"
    bench_kernels.main(["--smoke", "--platform", "tpu", "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["kernels"] == "tpu"
    # pallas (TPU kernels, interpret mode, the launch this device gets) and xla, both modes, plus naive
    rows = result["rows"]
    assert sorted((r["impl"], r["mode"]) for r in rows) == sorted(
        (i, m) for i in ("pallas", "xla", "naive") for m in ("fwd", "fwd+bwd")
    )
    for r in rows:
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["runs"] >= 3, r
        assert r["max_rel_error"] <= 5e-2, r
    assert {r["variant"] for r in rows if r["impl"] == "pallas"} == {"tpu interpret: chunk 128, blocks 128/128"}
    # softmax (cuDNN) is skipped with its reason; fla never ran (smoke drops it; on TPU it is skipped too)
    assert set(result["skipped"]) == {"softmax"} and "skipped softmax on TPU: its row is cuDNN" in printed
    # which is faster, and by how much, per (D, mode, T)
    comparison = {c["mode"]: c for c in result["tpu_vs_xla"]}
    assert set(comparison) == {"fwd", "fwd+bwd"}
    for c in comparison.values():
        fast, slow = sorted((c["pallas_ms"], c["xla_ms"]))
        assert c["faster"] == ("pallas" if c["pallas_ms"] < c["xla_ms"] else "xla")
        assert c["speedup"] == pytest.approx(slow / fast)
        assert f"-> {c['faster']} is {c['speedup']:.2f}x faster" in printed
    assert result["pallas_faster_every_fwd_bwd"] == (comparison["fwd+bwd"]["faster"] == "pallas")
    assert "| pallas (tpu interpret: chunk 128, blocks 128/128) | fwd+bwd |" in printed


def test_tune_kernels_smoke_writes_a_tpu_row_that_get_default_returns(tmp_path, own_tables, monkeypatch, capsys):
    out = tmp_path / "table.json"
    # a table already there: its GPU row and its TPU row of another head dim are kept
    gpu_row = {
        "device": "cpu",
        "dtype": "bfloat16",
        "head_dim": 128,
        "chunk": 64,
        **{k: {"block": 64, "num_warps": 4, "num_stages": 2} for k in launch_table.KERNELS},
    }
    other_tpu_row = {"device": "cpu", "dtype": "bfloat16", "head_dim": 256, **Sizes(256, 256, 256).to_entry()}
    launch_table.write_table(out, [gpu_row, other_tpu_row])

    tune_kernels.main(["--smoke", "--platform", "tpu", "--out", str(out)])
    printed = capsys.readouterr().out
    rows = launch_table.load_table(out)
    assert len(rows) == 3 and gpu_row in rows and other_tpu_row in rows
    (entry,) = [e for e in rows if e.get("backend") == "tpu" and e["head_dim"] == 128]
    assert launch_table.validate_entry(entry) is entry
    assert (entry["device"], entry["measured_on"], entry["dtype"]) == ("cpu", "cpu", "bfloat16")
    assert "compute_capability" not in entry and "interpret mode: not a measurement" in entry["source"]
    measured = entry["measured"]
    # two launches, forward + backward: chunk 32 and the launch this device got before (the fallback)
    assert set(measured["fwd_bwd_ms"]) == {"C32/bk128/bv128", "C128/bk128/bv128"}
    assert measured["previous_default"] == "C128/bk128/bv128" and measured["failed_launches"] == 0
    assert measured["tuned_fwd_bwd_ms"] == min(measured["fwd_bwd_ms"].values())
    assert measured["max_rel_error"] <= tune.tolerance("bfloat16") and measured["rejected_by_check"] == {}
    assert "chunk block_k block_v" in printed and f"{launch_table.ENV_VAR}={out}" in printed

    # the kernels read it: every head dim that pads to 128 on this device kind, not another kind's
    tuned = Sizes.from_entry(entry)
    monkeypatch.setenv(launch_table.ENV_VAR, str(out))
    for dim in (16, 64, 128):
        assert Sizes.get_default("bfloat16", dim, dim, device=types.SimpleNamespace(device_kind="cpu")) == tuned
    assert Sizes.get_default("bfloat16", 256, 256, device=types.SimpleNamespace(device_kind="cpu")) == Sizes(
        256, 256, 256
    )
    v6e = types.SimpleNamespace(device_kind="TPU v6 lite")
    assert Sizes.get_default("bfloat16", 128, 128, device=v6e) == Sizes(256, 128, 128)  # its shipped row


# ----------------------------------------------------------------------------- the tuner's candidates


def test_tpu_candidates_cover_chunks_and_blocks_up_to_the_padded_head_dim():
    assert tune.tpu_candidates(64) == [Sizes(128, 128, 128), Sizes(256, 128, 128)]  # 64 pads to 128
    d256 = tune.tpu_candidates(256)
    assert len(d256) == 8 and {(s.block_k, s.block_v) for s in d256} == {(128, 128), (128, 256), (256, 128), (256, 256)}
    assert {s.block_k for s in tune.tpu_candidates(384, [128])} == {128, 384}  # 256 does not divide 384
    assert tune.tpu_candidates(256, [128], quick=True) == [Sizes(128, 256, 256)]
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        tune.tpu_candidates(128, [48])


def test_rank_keeps_the_launches_that_ran_fastest_first():
    trials = [
        tune.TpuTrial(Sizes(256), seconds=2.0),
        tune.TpuTrial(Sizes(128, 256, 256), error="RuntimeError: VMEM exhausted"),
        tune.TpuTrial(Sizes(128), seconds=1.0),
    ]
    assert [t.sizes for t in tune.rank_tpu_trials(trials)] == [Sizes(128), Sizes(256)]
    with pytest.raises(ValueError, match="no TPU launch compiled and ran; errors: .*VMEM exhausted"):
        tune.rank_tpu_trials(trials[1:2])


# ----------------------------------------------------------------------------- users' mistakes


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--platform", "npu"], "argument --platform: invalid choice: 'npu'"),
        (["--smoke", "--batch", "0"], "--batch must be >= 1; got 0"),
    ],
)
def test_bench_kernels_bad_option_is_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        bench_kernels.main(argv)
    assert match in _one_line_exit(info, capsys)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--platform", "npu"], "argument --platform: invalid choice: 'npu'"),
        (["--smoke", "--platform", "tpu", "--chunks", "48"], "--chunks 48: TpuBlockSizes.chunk must be a power of two"),
    ],
)
def test_tune_kernels_bad_option_is_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        tune_kernels.main(argv)
    assert match in _one_line_exit(info, capsys)


def test_tune_kernels_tunes_one_head_dim_per_padded_dim_on_tpu(capsys):
    """Head dims that pad to one multiple of 128 (64 and 128 of `make tune-kernels`) make one row,
    tuned at the largest of them."""
    args = tune_kernels.parse_args(["--smoke", "--platform", "tpu", "--head-dims", "16", "32"])
    assert args.head_dims == [32] and "pad to 128: tuning 32" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["bench", "tune"])
@pytest.mark.parametrize("platform", [[], ["--platform", "tpu"]], ids=["auto", "tpu"])
def test_without_smoke_a_cpu_is_refused_in_one_line_naming_the_backend(script, platform, own_tables, capsys):
    main = bench_kernels.main if script == "bench" else tune_kernels.main
    impls = ["--impls", "pallas", "xla"] if script == "bench" else []  # no FLA process before the check
    with pytest.raises(SystemExit) as info:
        main([*platform, *impls])
    message = _one_line_exit(info, capsys)
    assert "JAX sees cpu" in message and "--smoke" in message and "--platform tpu" in message
