"""How far sequence parallelism stretches the context of one GPT training step, and what it exchanges.

    python benchmarks/context_parallel.py                         # gpt-300m, 1 / 2 / 4 / 8 devices
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/context_parallel.py

For each device count N the devices form a 1 x N (data x seq) mesh: one sequence
per step, split N ways (cottention_jax.parallel). The longest context that
trains one step is found by doubling the sequence length until XLA's compiled
memory per device exceeds --memory-gb (nothing runs to find it). At --probe-seq
the compiled step's collectives are read from its HLO: what sequence-parallel
attention moves per layer (all-gathers of counts and d x d states, their
reduce-scatters in the backward pass, or permutes for exchange="scan") and the
gradients' all-reduce. With --time (on GPUs) the step is also run at --probe-seq
and timed (median of 10 synchronised steps after warm-up).
On simulated CPU devices the figures are compiled ones, not a measurement.
Writes results.json to --out.
"""

import argparse
import contextlib
import json
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

if "--cpu-devices" in sys.argv:  # before JAX starts: simulated CPU devices
    count = sys.argv[sys.argv.index("--cpu-devices") + 1]
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from benchmarks.measure import describe_device, median_time  # noqa: E402
from cottention_jax.configs import train_preset  # noqa: E402
from cottention_jax.memory import compile_train_step  # noqa: E402
from cottention_jax.sharding import collectives, make_mesh, place_batch, shard_training_state  # noqa: E402
from cottention_jax.train import build_model, build_optimizer, make_train_step  # noqa: E402


def config_for(args, n: int, seq: int):
    base = train_preset(args.preset)
    vocab = [f"model.vocab_size={base.data.vocab_size}"] if base.data.vocab_size else []
    sharding = [] if n == 1 else ["sharding=data", f"seq_parallel={n}"]
    length = [f"model.max_len={seq}", f"data.seq_len={seq}"]  # the GPT refuses inputs past max_len
    return train_preset(args.preset, [*vocab, *length, "data.batch_size=1", *sharding, *args.overrides])


def compiled_step(args, n: int, seq: int):
    mesh = None if n == 1 else make_mesh("data", n, jax.devices()[:n])
    compiled, seconds = compile_train_step(config_for(args, n, seq), 1, seq, mesh)
    a = compiled.memory_analysis()
    total = a.argument_size_in_bytes + a.output_size_in_bytes + a.temp_size_in_bytes - a.alias_size_in_bytes
    return compiled, total / 1e9, seconds


def longest_context(args, n: int) -> dict:
    """The longest power-of-two multiple of --start-seq whose step fits --memory-gb per device."""
    best, seq = None, args.start_seq
    while seq <= args.max_seq:
        _, gb, seconds = compiled_step(args, n, seq)
        print(f"  N={n} seq {seq:>9,}: {gb:7.1f} GB per device (compiled in {seconds:.0f} s)", flush=True)
        if gb > args.memory_gb:
            break
        best, seq = {"seq": seq, "gb_per_device": gb}, seq * 2
    return best or {"seq": None, "gb_per_device": None}


def exchange(args, n: int) -> dict:
    """Bytes per device the compiled step at --probe-seq moves: attention's exchanges per layer
    (every collective but the all-reduces) and the all-reduces (parameter gradients)."""
    compiled, _, _ = compiled_step(args, n, args.probe_seq)
    found = collectives(compiled.as_text())
    layers = config_for(args, n, args.probe_seq).model.num_layers
    moved = sum(c["bytes"] for c in found if c["op"] != "all-reduce")
    return {
        "attention_bytes_per_layer": moved / layers,
        "largest_exchange_bytes": max([c["bytes"] for c in found if c["op"] != "all-reduce"], default=0),
        "allreduce_bytes": sum(c["bytes"] for c in found if c["op"] == "all-reduce"),
        "ops": sorted({c["op"] for c in found}),
        "compiled": compiled,
    }


def time_step(args, n: int) -> float:
    """Median seconds of the training step at --probe-seq with real arrays on the 1 x n mesh."""
    cfg = config_for(args, n, args.probe_seq)
    mesh = None if n == 1 else make_mesh("data", n, jax.devices()[:n])
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim, cfg.steps)
    if mesh is not None:
        shard_training_state(model, optimizer, mesh, fsdp=False)
    ids = jax.random.randint(jax.random.PRNGKey(0), (1, args.probe_seq + 1), 0, cfg.model.vocab_size)
    batch = place_batch(
        {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jax.numpy.ones((1, args.probe_seq))}, mesh
    )
    with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
        step = make_train_step(cfg.kind).lower(model, optimizer, batch).compile()
        return median_time(step, model, optimizer, batch, warmup=2, repeats=10)["median_s"]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt-300m")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--memory-gb", type=float, default=80.0, help="per-device budget (an H100: 80)")
    p.add_argument("--start-seq", type=int, default=8192)
    p.add_argument("--max-seq", type=int, default=1 << 21)
    p.add_argument("--probe-seq", type=int, default=32768, help="sequence length of the exchange / timing rows")
    p.add_argument("--time", action="store_true", help="also run and time the step at --probe-seq (GPUs)")
    p.add_argument("--cpu-devices", type=int, help="simulate this many CPU devices (set before JAX starts)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/context_parallel"))
    args = p.parse_args(argv)
    info = describe_device()
    if max(args.devices) > jax.device_count():
        sys.exit(
            f"--devices asks for {max(args.devices)} devices; JAX sees {jax.device_count()} (on a CPU: --cpu-devices 8)"
        )
    rows = []
    for n in args.devices:
        start = time.perf_counter()
        row = {"devices": n, **longest_context(args, n)}
        ex = exchange(args, n)
        del ex["compiled"]
        row.update(ex)
        if args.time:
            row["step_ms"] = 1e3 * time_step(args, n)
            print(f"  N={n} seq {args.probe_seq:,}: {row['step_ms']:.1f} ms per step", flush=True)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    one = next((r["seq"] for r in rows if r["devices"] == 1 and r["seq"]), None)
    print(
        f"\n{args.preset} training step, batch 1, per-device budget {args.memory_gb:g} GB, compiled for "
        f"{info['device']} ({info['device_count']} devices), jax {info['jax']}"
    )
    print(
        f"{'devices':>7} {'longest context':>15} {'x one device':>12} {'GB/device':>9} "
        f"{'attention MB/layer':>18} {'largest exchange KB':>19} {'grad all-reduce MB':>18}"
    )
    for r in rows:
        gain = f"{r['seq'] / one:.0f}x" if one and r["seq"] else "-"
        print(
            f"{r['devices']:>7} {r['seq'] or '-':>15} {gain:>12} {r['gb_per_device'] or 0:>9.1f} "
            f"{r['attention_bytes_per_layer'] / 1e6:>18.2f} {r['largest_exchange_bytes'] / 1e3:>19.1f} "
            f"{r['allreduce_bytes'] / 1e6:>18.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"info": info, "args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1, default=str)
    )
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
