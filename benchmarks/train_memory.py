"""Compiled memory of one GPT training step at the papers' size, with and without the savings.

    python benchmarks/train_memory.py [--preset gpt-300m] [--tokens 65536]
        [--rows cosine:8192:dots:4096 softmax-flash:8192:none:0 ...] [--set model.dtype=float32 ...]

A row is ATTENTION:SEQ:REMAT:LOSS_CHUNK (batch = tokens // seq); ATTENTION is
"cosine" or "softmax-flash" (softmax through the Pallas flash kernel, in interpret
mode off a GPU). Nothing runs: each step is built abstractly, lowered and compiled
for the default backend, and XLA's buffer assignment is read
(`cottention_jax.memory.train_step_memory`). On CPU these are compiled figures,
not a device measurement. Writes results.json to --out.
"""

import argparse
import json
import pathlib
import sys

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import jax

from benchmarks.measure import describe_device  # noqa: E402
from cottention_jax.configs import train_preset
from cottention_jax.memory import train_step_memory

ATTENTION = {
    "cosine": ["model.attention=cosine"],
    "softmax-flash": ["model.attention=softmax", "model.implementation=pallas", "model.interpret=true"],
}
DEFAULT_ROWS = [
    "cosine:2048:none:0",
    "cosine:2048:dots:4096",
    "cosine:8192:none:0",
    "cosine:8192:block:0",
    "cosine:8192:dots:0",
    "cosine:8192:none:4096",
    "cosine:8192:dots:4096",
    "cosine:8192:block:4096",
    "cosine:65536:none:0",
    "cosine:65536:dots:4096",
    "cosine:65536:block:4096",
    "softmax-flash:8192:none:0",
    "softmax-flash:8192:dots:4096",
    "softmax-flash:8192:block:4096",
    "softmax-flash:2048:none:0",
    "softmax-flash:2048:dots:4096",
]


def parse_row(text: str) -> dict:
    parts = text.split(":")
    if len(parts) != 4 or parts[0] not in ATTENTION:
        raise SystemExit(
            f"--rows entries look like ATTENTION:SEQ:REMAT:LOSS_CHUNK with ATTENTION in "
            f"{sorted(ATTENTION)}; got {text!r}"
        )
    return {"attention": parts[0], "seq": int(parts[1]), "remat": parts[2], "loss_chunk": int(parts[3])}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt-300m")
    p.add_argument("--tokens", type=int, default=65_536, help="tokens per optimizer step")
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every row (the model's vocabulary is the data's unless set)",
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/train_memory"))
    args = p.parse_args(argv)
    rows = [parse_row(r) for r in args.rows]
    info = describe_device()
    base = train_preset(args.preset)
    vocab = [f"model.vocab_size={base.data.vocab_size}"] if base.data.vocab_size else []
    print(
        f"preset {args.preset!r}, {args.tokens:,} tokens per step, compiled for {info['device']} "
        f"({info['platform']}), jax {info['jax']}; GB = 1e9 bytes",
        flush=True,
    )
    print(
        "| attention | seq | batch | tokens/step | remat | loss_chunk | arguments GB | outputs GB "
        "| temporaries GB | total GB | compile s |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    results = []
    for row in rows:
        batch = max(args.tokens // row["seq"], 1)
        overrides = [
            *vocab,
            f"model.max_len={row['seq']}",
            f"data.seq_len={row['seq']}",
            f"data.batch_size={batch}",
            *ATTENTION[row["attention"]],
            f"model.remat={row['remat']}",
            f"model.loss_chunk={row['loss_chunk']}",
            *args.overrides,
        ]
        head = (
            f"| {row['attention']} | {row['seq']:,} | {batch} | {batch * row['seq']:,} | {row['remat']} "
            f"| {row['loss_chunk']} |"
        )
        try:
            config = train_preset(args.preset, overrides)
        except ValueError as err:  # e.g. a field this version of the models does not have yet
            print(f"{head} not available: {err} |||||", flush=True)
            results.append({**row, "batch": batch, "error": str(err)})
            continue
        mem = train_step_memory(config, batch, row["seq"])
        gb = {k: mem[k] / 1e9 for k in ("arguments", "outputs", "temporaries", "total")}
        print(
            f"{head} {gb['arguments']:.2f} | {gb['outputs']:.2f} | {gb['temporaries']:.2f} "
            f"| **{gb['total']:.1f}** | {mem['compile_s']:.0f} |",
            flush=True,
        )
        results.append({**row, "batch": batch, **mem})
        jax.clear_caches()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"info": info, "preset": args.preset, "tokens": args.tokens, "rows": results}, indent=1)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
