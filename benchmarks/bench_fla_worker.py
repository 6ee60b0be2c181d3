"""Worker of bench_kernels.py: flash-linear-attention's chunk_linear_attn (PyTorch/Triton), the
external yardstick, on the same shapes as the JAX rows. A process of its own that never imports jax,
so neither framework's allocator sees the other. Every (head dim, mode, length) runs in this one
process; if torch, CUDA or fla is missing, every row says so (no separate probe). Writes its rows as
JSON to --out.
"""

import argparse
import inspect
import json
import pathlib
import statistics
import sys


def _unavailable() -> str | None:
    """Why FLA cannot run here, or None."""
    try:
        import fla.ops.linear_attn  # noqa: F401, PLC0415
        import torch  # noqa: PLC0415
    except Exception as err:  # noqa: BLE001
        return f"not run: flash-linear-attention does not import here ({type(err).__name__}: {err})"[:200]
    return None if torch.cuda.is_available() else "not run: torch sees no CUDA device"


def measure(args, d: int, mode: str) -> list[dict]:
    """flash-linear-attention's chunk_linear_attn on the same shapes; never imports jax."""
    import torch  # noqa: PLC0415
    from fla.ops.linear_attn import chunk_linear_attn  # noqa: PLC0415

    dtype = getattr(torch, args.dtype)
    options = {"scale": 1.0, "normalize": False}
    if "head_first" in inspect.signature(chunk_linear_attn).parameters:
        options["head_first"] = False  # (B, T, H, D), as the JAX rows
    rows = []
    for t in sorted(args.seqs):
        row = {
            "impl": "fla",
            "variant": "chunk_linear_attn",
            "mode": mode,
            "batch": args.batch,
            "seq": t,
            "heads": args.heads,
            "head_dim": d,
            "dtype": args.dtype,
        }
        try:
            shape = (args.batch, t, args.heads, d)
            q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.float32) for _ in range(4))
            q, k = (torch.nn.functional.normalize(x, dim=-1) for x in (q, k))
            q, k, v = (x.to(dtype).requires_grad_(mode == "fwd+bwd") for x in (q, k, v))
            do = do.to(dtype)

            def call(q=q, k=k, v=v, do=do):  # this (mode, T)'s inputs
                if mode == "fwd":  # no autograd graph, as the JAX forward rows
                    with torch.no_grad():
                        return chunk_linear_attn(q, k, v, **options)[0]
                out = chunk_linear_attn(q, k, v, **options)[0]
                return torch.autograd.grad(out, (q, k, v), do)

            for _ in range(args.warmup):
                call()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            while len(times) < args.repeats and (len(times) < 3 or sum(times) < args.max_seconds):
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            row.update(
                median_s=statistics.median(times),
                min_s=min(times),
                runs=len(times),
                peak_bytes=torch.cuda.max_memory_allocated(),
                status="ok",
            )
        except Exception as err:  # noqa: BLE001
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        rows.append(row)
        q = k = v = do = None  # free this length's tensors before the next one
        torch.cuda.empty_cache()
        print(f"[fla] {mode:8s} d={d} T={t}: {row['status']}", flush=True)
    return rows


def main(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dims", type=int, nargs="+", required=True)
    p.add_argument("--seqs", type=int, nargs="+", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--dtype", required=True)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--out", type=pathlib.Path, required=True)
    args = p.parse_args(argv)
    why = _unavailable()
    modes = ("fwd", "fwd+bwd")
    if why:
        print(f"[fla] {why}", flush=True)
        rows = [
            {
                "impl": "fla",
                "variant": "chunk_linear_attn",
                "mode": m,
                "batch": args.batch,
                "seq": t,
                "heads": args.heads,
                "head_dim": d,
                "dtype": args.dtype,
                "status": why,
            }
            for d in args.dims
            for m in modes
            for t in args.seqs
        ]
    else:
        rows = [row for d in args.dims for m in modes for row in measure(args, d, m)]
    args.out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
