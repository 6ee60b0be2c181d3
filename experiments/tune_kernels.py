"""Tune the Pallas kernels' launch parameters on this GPU or TPU and write a table the kernels pick up.

    python experiments/tune_kernels.py --head-dims 64 128 --dtype bfloat16
    python experiments/tune_kernels.py --head-dims 128 --quick             # 4 / 8 warps, 2 / 3 stages
    python experiments/tune_kernels.py --smoke --out /tmp/table.json       # CPU: interpret mode, tiny shapes
    python experiments/tune_kernels.py --platform tpu --head-dims 128 256  # on a TPU: the Mosaic kernels
    python experiments/tune_kernels.py --smoke --platform tpu              # CPU: TPU interpret mode, tiny shapes

GPU (Triton kernels): for each head dim, every candidate launch (block, warps, stages) of every kernel
(forward, dQ, dK~, dV) is timed alone at every chunk size, at a representative
shape (default B=8, T=16384, H=16). Each kernel keeps its fastest launch; the
chunk whose four kernels sum to the least time wins. The result is checked
against the float32 reference and timed end to end beside the default it
replaces. Launches that fail to compile (e.g. too much shared memory) are
recorded, not fatal. The algorithm: pallas_kernels/cosine_attn/tune.py.

TPU (Mosaic kernels, `--platform tpu`, the default on a TPU backend): for each padded head
dim (a multiple of 128; of several head dims that pad to one, the largest is tuned), every
TpuBlockSizes (chunks 128 and 256 by default; block_k and block_v 128, 256 and the whole
padded dim) and the launch the table gives today are timed end to end, forward + backward,
at the same representative shape. The fastest launch within tolerance of the float32
reference wins (a slower one is taken if the fastest fails the check; none: nothing is
written). `--quick`: whole-dim blocks only. The row is `"backend": "tpu"` for this
device.device_kind, and `TpuBlockSizes.get_default` reads it.

Writes (merging with what is there) the user table that the kernels read
automatically, `~/.cache/cottention_jax/tuned_block_sizes.json`, or --out; set
COTTENTION_KERNEL_TABLE=<path> to point the kernels at another file. See
pallas_kernels/cosine_attn/launch_table.py for the format and the lookup order.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile

import jax
from tqdm import tqdm

from cottention_jax.cli_errors import OneLineParser
from pallas_kernels.cosine_attn import launch_table, pallas, pallas_tpu, tune

PROG = "tune_kernels.py"


def parse_args(argv=None):
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head-dims", type=int, nargs="+", default=None, help="default: 64 128 (GPU), 128 256 (TPU)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--chunks", type=int, nargs="+", default=None, help="default: 32 64 128 (GPU), 128 256 (TPU)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer launches: 4 / 8 warps, 2 / 3 stages (GPU); blocks of the whole padded head dim (TPU)",
    )
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--out", type=pathlib.Path, default=None, help=f"table to write (default {launch_table.user_table_path()})"
    )
    p.add_argument(
        "--platform",
        choices=["gpu", "tpu"],
        default=None,
        help="whose kernels to tune: gpu (Triton) or tpu (Mosaic); default JAX's backend. On a CPU only "
        "with --smoke (interpret mode; default gpu)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny shapes in interpret mode (any backend); for tests")
    args = p.parse_args(argv)
    for name in ("batch", "seq", "heads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    if any(d < 1 for d in args.head_dims or []) or any(c < 1 for c in args.chunks or []):
        p.error(f"--head-dims and --chunks must be >= 1; got {args.head_dims} and {args.chunks}")
    try:
        args.platform = tune.kernel_platform(args.platform, args.smoke, jax.default_backend())
    except ValueError as err:
        sys.exit(f"{PROG}: {err}")
    tpu = args.platform == "tpu"
    args.head_dims = args.head_dims or ([128, 256] if tpu else [64, 128])
    args.chunks = args.chunks or ([128, 256] if tpu else [32, 64, 128])
    if tpu:
        try:
            tune.tpu_candidates(128, args.chunks)
        except ValueError as err:
            p.error(f"--chunks {' '.join(map(str, args.chunks))}: {err}")
    if args.smoke:
        if tpu:  # two launches (chunk 32 and the table's) at one head dim: TPU interpret mode is slow
            args.batch, args.seq, args.heads, args.chunks, args.repeats = 1, 64, 2, [32], 2
            args.head_dims = [d for d in args.head_dims if d <= 32] or [16]
        else:
            args.batch, args.seq, args.heads, args.chunks, args.repeats = 1, 64, 2, [16, 32], 2
            args.head_dims = [d for d in args.head_dims if d <= 32] or [16, 32]
        args.out = args.out or pathlib.Path(tempfile.mkdtemp()) / "tuned_block_sizes.json"
    if tpu:  # one row per padded head dim (a multiple of 128): tuned at the largest head dim that pads to it
        widest = {pallas_tpu.tpu_padded_head_dim(d): d for d in sorted(args.head_dims)}
        if len(widest) < len(set(args.head_dims)):
            print(
                f"on TPU, --head-dims {' '.join(map(str, args.head_dims))} pad to "
                f"{' '.join(map(str, sorted(widest)))}: tuning {' '.join(map(str, widest.values()))} (one row each)"
            )
        args.head_dims = list(widest.values())
    return args


def _launches(args, padded_dim):
    if args.smoke:  # two launches per kernel: enough to exercise the choice
        return [pallas.KernelLaunch(16, 4, 2), pallas.KernelLaunch(min(32, padded_dim), 4, 2)]
    return tune.candidate_launches(padded_dim, quick=args.quick)


def _print_trials(trials):
    print(f"\n{'kernel':>8} {'chunk':>5} {'block':>5} {'warps':>5} {'stages':>6} {'ms':>9}  status")
    for t in sorted(trials, key=lambda t: (t.kernel, t.chunk, t.seconds or float("inf"))):
        ms = f"{1e3 * t.seconds:9.3f}" if t.seconds is not None else f"{'-':>9}"
        print(
            f"{t.kernel:>8} {t.chunk:>5} {t.launch.block:>5} {t.launch.num_warps:>5} "
            f"{t.launch.num_stages:>6} {ms}  {t.error or 'ok'}"
        )


def _source(args, what: str) -> str:
    return (
        f"experiments/tune_kernels.py{' --smoke (interpret mode: not a measurement)' if args.smoke else ''}, "
        f"{what}B={args.batch} T={args.seq} H={args.heads}, jax {jax.__version__}, {datetime.date.today()}"
    )


def tune_head_dim(args, d: int) -> dict:
    shape = tune.TuneShape(args.batch, args.seq, args.heads, d, args.dtype)
    launches = _launches(args, shape.padded_dim)
    jobs = len(args.chunks) * len(launch_table.KERNELS) * len(launches)
    trials = list(
        tqdm(
            tune.run_trials(shape, args.chunks, launches, interpret=args.smoke, repeats=args.repeats),
            total=jobs,
            desc=f"d={d} {args.dtype}",
            unit="launch",
        )
    )
    _print_trials(trials)
    sizes, kernel_seconds = tune.best_block_sizes(trials)
    error = tune.check_block_sizes(shape, sizes, interpret=args.smoke)
    default = pallas.BlockSizes.get_default(args.dtype, d, d)
    timing = {
        "tuned": tune.time_block_sizes(shape, sizes, interpret=args.smoke, repeats=args.repeats),
        "previous_default": tune.time_block_sizes(shape, default, interpret=args.smoke, repeats=args.repeats),
    }
    print(f"d={d}: chosen {sizes}\n  max relative error vs the float32 reference {error:.2e}")
    for name, t in timing.items():
        print(f"  {name:>16}: forward {1e3 * t['forward']:.3f} ms, forward+backward {1e3 * t['fwd_bwd']:.3f} ms")
    measured = {
        "shape": {"batch": args.batch, "seq": args.seq, "heads": args.heads, "head_dim": d},
        "kernel_ms": {k: round(1e3 * s, 4) for k, s in kernel_seconds.items()},
        **{f"{name}_{kind}_ms": round(1e3 * s, 4) for name, t in timing.items() for kind, s in t.items()},
        "max_rel_error": error,
        "failed_launches": sum(t.error is not None for t in trials),
    }
    return tune.make_entry(jax.devices()[0], shape, sizes, measured, _source(args, ""))


def _tpu_label(sizes: pallas_tpu.TpuBlockSizes) -> str:
    return f"C{sizes.chunk}/bk{sizes.block_k}/bv{sizes.block_v}"


def tune_tpu_head_dim(args, d: int) -> dict:
    """Time every TPU launch (and the table's current one) forward + backward; keep the fastest that
    passes the check against the reference. ValueError if none does."""
    shape = tune.TuneShape(args.batch, args.seq, args.heads, d, args.dtype)
    previous = pallas_tpu.TpuBlockSizes.get_default(args.dtype, d, d)
    candidates = list(dict.fromkeys([*tune.tpu_candidates(d, args.chunks, quick=args.quick), previous]))
    trials = list(
        tqdm(
            tune.run_tpu_trials(
                shape, candidates, interpret=args.smoke, warmup=1 if args.smoke else 2, repeats=args.repeats
            ),
            total=len(candidates),
            desc=f"d={d} {args.dtype} (TPU)",
            unit="launch",
        )
    )
    print(f"\n{'chunk':>5} {'block_k':>7} {'block_v':>7} {'fwd+bwd ms':>10}  status")
    for t in sorted(trials, key=lambda t: t.seconds or float("inf")):
        ms = f"{1e3 * t.seconds:10.3f}" if t.seconds is not None else f"{'-':>10}"
        mark = " (the table's launch today)" if t.sizes == previous else ""
        print(f"{t.sizes.chunk:>5} {t.sizes.block_k:>7} {t.sizes.block_v:>7} {ms}  {t.error or 'ok'}{mark}")
    limit, rejected = tune.tolerance(args.dtype), {}
    for trial in tune.rank_tpu_trials(trials):
        error = tune.check_block_sizes(shape, trial.sizes, interpret=args.smoke)
        if error <= limit:
            break
        rejected[_tpu_label(trial.sizes)] = error
        print(f"  {_tpu_label(trial.sizes)}: max relative error {error:.2e} > {limit:.0e}; not taken")
    else:
        raise ValueError(
            f"d={d}: every TPU launch that ran is further than {limit:.0e} from the float32 reference "
            f"({', '.join(f'{k} {e:.2e}' for k, e in rejected.items())}); nothing written"
        )
    seconds = {_tpu_label(t.sizes): t.seconds for t in trials if t.seconds is not None}
    tuned, before = seconds[_tpu_label(trial.sizes)], seconds.get(_tpu_label(previous))
    print(f"d={d}: chosen {trial.sizes}\n  max relative error vs the float32 reference {error:.2e}")
    print(
        f"  forward+backward {1e3 * tuned:.3f} ms; the table's launch today ({_tpu_label(previous)}) "
        + (
            f"{1e3 * before:.3f} ms"
            if before is not None
            else f"failed: {next(t.error for t in trials if t.sizes == previous)}"
        )
    )
    measured = {
        "shape": {"batch": args.batch, "seq": args.seq, "heads": args.heads, "head_dim": d},
        "fwd_bwd_ms": {k: round(1e3 * s, 4) for k, s in seconds.items()},
        "tuned_fwd_bwd_ms": round(1e3 * tuned, 4),
        "previous_default": _tpu_label(previous),
        "previous_default_fwd_bwd_ms": None if before is None else round(1e3 * before, 4),
        "max_rel_error": error,
        "rejected_by_check": rejected,
        "failed_launches": sum(t.error is not None for t in trials),
    }
    return tune.make_entry(jax.devices()[0], shape, trial.sizes, measured, _source(args, "TPU, forward+backward, "))


def main(argv=None):
    args = parse_args(argv)
    out = args.out or launch_table.user_table_path()
    tune_one = tune_tpu_head_dim if args.platform == "tpu" else tune_head_dim
    try:
        entries = [tune_one(args, d) for d in args.head_dims]
    except ValueError as err:  # no launch worked: the user's to act on, in one line
        sys.exit(f"{PROG}: {err}")
    old = launch_table.load_table(out) if out.is_file() else []
    launch_table.write_table(out, launch_table.merge_entries(old, entries))
    used = (
        "it is read automatically"
        if out == launch_table.user_table_path()
        else f"point the kernels at it with {launch_table.ENV_VAR}={out}"
    )
    print(f"wrote {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} to {out} ({used})")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
