"""Training throughput (tokens/s) and MFU of the GPT with cosine vs softmax attention at several lengths.

    python benchmarks/train_throughput.py                      # gpt-300m at seq 2K, 8K, 32K (a GPU)
    python benchmarks/train_throughput.py --preset gpt-small --seq-lens 512 2048 --tokens 8192   # CPU

Each optimizer step sees --tokens tokens (batch = tokens / seq), random token ids.
Each row's step is compiled once; when XLA's compiled memory of the step exceeds
the device's memory (a GPU's allocator limit, or this host's RAM on a CPU) the
row is skipped with that reason instead of run; running out of memory (at
compile or run time) is a row with status "oom: ...", not a crash. Time: the
median of synchronised steps after warm-up. MFU = model FLOPs per second (matmuls
6 N T plus attention, `benchmarks.measure.gpt_train_flops`, whose docstring is
results.json's "flop_formula") / the device's dense bf16 peak (unknown devices and
non-2-byte dtypes: no MFU). Peak memory: the device allocator's peak
(`memory_stats()`, a GPU) since the process started, so run one row per process
to read it per row (benchmarks/gpu_check.py does). Softmax uses its default
implementation (cuDNN flash on a GPU). Writes results.json to --out.
"""

import argparse
import inspect
import json
import pathlib
import sys

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import jax
import jax.numpy as jnp

from benchmarks.measure import (  # noqa: E402
    describe_device,
    device_peak_bytes,
    gpt_train_flops,
    host_memory_bytes,
    median_time,
    peak_flops,
)
from cottention_jax.configs import train_preset  # noqa: E402
from cottention_jax.memory import compiled_bytes  # noqa: E402
from cottention_jax.train import build_model, build_optimizer, make_train_step  # noqa: E402


def device_memory_limit() -> int:
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return (stats or {}).get("bytes_limit") or host_memory_bytes()


def _failure(err: Exception, what: str) -> str:
    """A row's status for an exception: "oom: ..." when the device ran out of memory."""
    text = (str(err).splitlines() or [""])[0][:160]
    oom = "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()
    return f"{'oom' if oom else what}: {type(err).__name__}: {text}"


def measure(cfg, seq: int, tokens: int, repeats: int, limit: int) -> dict:
    batch_size = max(tokens // seq, 1)
    row = {"attention": cfg.model.attention, "seq": seq, "batch": batch_size, "tokens": batch_size * seq}
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim, cfg.steps)
    ids = jax.random.randint(jax.random.PRNGKey(seq), (batch_size, seq + 1), 0, cfg.model.vocab_size)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jnp.ones((batch_size, seq))}
    try:
        compiled = make_train_step(cfg.kind).lower(model, optimizer, batch).compile()
    except Exception as err:  # noqa: BLE001  (a step that cannot compile is a result)
        return {**row, "status": _failure(err, "skipped: does not compile")}
    row["compiled_GB"] = (compiled_bytes(compiled) or 0) / 1e9
    if row["compiled_GB"] * 1e9 > limit:
        return {
            **row,
            "status": f"skipped: needs {row['compiled_GB']:.1f} GB compiled, the device has {limit / 1e9:.1f} GB",
        }
    try:
        timing = median_time(compiled, model, optimizer, batch, warmup=2, repeats=repeats)
    except Exception as err:  # noqa: BLE001  (out of memory at run time is a result too)
        return {**row, "status": _failure(err, "error"), "peak_memory_GB": _peak_GB()}
    seconds = timing["median_s"]
    peak = peak_flops(describe_device()["device"], cfg.model.dtype)
    flops = gpt_train_flops(cfg.model, batch_size, seq)
    return {
        **row,
        "status": "ok",
        "ms_per_step": 1e3 * seconds,
        "tokens_per_second": row["tokens"] / seconds,
        "model_flops_per_step": flops,
        "model_tflops_per_s": flops / seconds / 1e12,
        "peak_flops": peak,
        "mfu": None if peak is None else flops / seconds / peak,
        "peak_memory_GB": _peak_GB(),
    }


def _peak_GB() -> float | None:
    """The device allocator's peak since the process started (None on a CPU)."""
    peak = device_peak_bytes()
    return None if peak is None else peak / 1e9


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt-300m")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--tokens", type=int, default=65536, help="tokens per optimizer step")
    p.add_argument("--attention", nargs="+", default=["cosine", "softmax"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/train_throughput"))
    args = p.parse_args(argv)
    info = describe_device()
    limit = device_memory_limit()
    base = train_preset(args.preset)
    vocab = [f"model.vocab_size={base.data.vocab_size}"] if base.data.vocab_size else []  # what it trains with
    rows = []
    for seq in args.seq_lens:
        for attention in args.attention:
            cfg = train_preset(
                args.preset, [*vocab, f"model.attention={attention}", f"model.max_len={seq}", *args.overrides]
            )
            row = measure(cfg, seq, args.tokens, args.repeats, limit)
            rows.append(row)
            if row["status"] == "ok":
                mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
                print(
                    f"{attention:>8} seq {seq:>6} batch {row['batch']:>3}: {row['tokens_per_second']:>10,.0f} "
                    f"tokens/s ({row['ms_per_step']:.0f} ms/step, MFU {mfu}, {row['compiled_GB']:.1f} GB compiled)",
                    flush=True,
                )
            else:
                print(f"{attention:>8} seq {seq:>6}: {row['status']}", flush=True)
    print(
        f"GPT preset {args.preset!r} training steps on {info['device']} ({info['cpu_cores']} cores), jax {info['jax']}"
    )
    for seq in args.seq_lens:
        rate = {r["attention"]: r.get("tokens_per_second") for r in rows if r["seq"] == seq}
        if rate.get("cosine") and rate.get("softmax"):
            print(f"seq {seq}: cosine / softmax tokens/s = {rate['cosine'] / rate['softmax']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"info": info, "flop_formula": inspect.getdoc(gpt_train_flops), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
