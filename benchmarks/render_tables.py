"""Write the README's GPU tables from benchmarks/results/<device>.json (benchmarks/gpu_check.py's output).

    python benchmarks/render_tables.py                                  # every GPU results file -> README.md
    python benchmarks/render_tables.py benchmarks/results/nvidia-h200.json --markdown README.md
    python benchmarks/render_tables.py --print                          # the tables on stdout, nothing written

The region of the Markdown file between the lines `<!-- gpu-tables:begin -->` and
`<!-- gpu-tables:end -->` is replaced by one section per results file: the device,
versions, date and commit, then tables of the kernels (ms and % of the HBM
roofline, the Pallas kernel's speed-up over the others), training throughput
(tokens/s, MFU, peak memory), decoding (ms/token) and the GPU tests. A stage that
did not finish says so instead of a table. Nothing else in the file changes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu-tables:begin -->", "<!-- gpu-tables:end -->"
FORMAT = "cottention-jax gpu results"
VERSIONS = ("python", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "triton", "torch", "fla-core")


def _num(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _ms(x) -> str:
    return "-" if x is None else f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def _stage(result: dict, name: str) -> dict:
    return result.get("stages", {}).get(name) or {"status": "not run"}


def _unfinished(stage: dict) -> str | None:
    """One line for a stage without results, else None."""
    if stage.get("results") and (
        stage["results"].get("rows") or stage["results"].get("counts") or stage["results"].get("entries")
    ):
        return None
    reason = f": {stage['reason']}" if stage.get("reason") else ""
    note = f" {stage['note']}" if stage.get("note") else ""
    return f"No table (stage {stage.get('status', 'not run')}{reason}).{note}"


def header(result: dict) -> str:
    machine = result.get("machine", {})
    probe = result.get("probe") or {}
    versions = ", ".join(f"{name} {machine[name]}" for name in VERSIONS if machine.get(name))
    commit = (machine.get("git_commit") or "unknown")[:7] + (" with local changes" if machine.get("git_dirty") else "")
    cc = f" (compute capability {probe['compute_capability']})" if probe.get("compute_capability") else ""
    lines = [
        f"#### {result['device']}",
        "",
        f"Measured on **{result['device']}**{cc} on {(machine.get('date') or '?')[:10]}, at commit `{commit}`"
        f" ({versions}). Source: {result.get('provenance', 'benchmarks/gpu_check.py')}.",
    ]
    if result.get("dry_run"):
        lines.append("**Dry run on the CPU: toy sizes, not a measurement.**")
    return "\n".join(lines)


def kernel_table(stage: dict) -> str:
    res = stage.get("results") or {}
    rows = res.get("rows", [])
    if not rows:
        return _unfinished(stage)
    first = rows[0]
    bandwidth = res.get("peak_bandwidth_bytes_per_s")
    roofline = f"roofline = least HBM bytes / {bandwidth / 1e12:.2f} TB/s / time; " if bandwidth else ""
    intro = (
        f"Causal attention, {first['dtype']}, B={first['batch']}, H={first['heads']}, D={first['head_dim']}; "
        f"fwd and fwd+bwd (the VJP in q, k, v) in ms; {roofline}speed-up = the other's fwd+bwd time / "
        "pallas's at the same T."
    )
    cell = {(r["impl"], r.get("variant", ""), r["seq"], r["mode"]): r for r in rows}
    # the speed-ups' baseline: pallas's row at each T (not a "previous defaults" row kept for comparison)
    baseline = {
        t: (i, v)
        for (i, v, t, m), r in cell.items()
        if i == "pallas" and m == "fwd+bwd" and r.get("status") == "ok" and not v.startswith("previous")
    }
    lines = [
        "| implementation | T | fwd ms | fwd+bwd ms | fwd+bwd % of roofline | pallas speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for impl, variant, seq in sorted({k[:3] for k in cell}, key=lambda k: (k[2], k[0] != "pallas", k[0], k[1])):
        fwd, both = cell.get((impl, variant, seq, "fwd"), {}), cell.get((impl, variant, seq, "fwd+bwd"), {})
        ok_f, ok_b = fwd.get("status") == "ok", both.get("status") == "ok"
        roof = both.get("roofline_fraction") if ok_b else None
        base = baseline.get(seq)
        ratio = (
            both["median_ms"] / cell[(*base, seq, "fwd+bwd")]["median_ms"]
            if ok_b and base and base != (impl, variant)
            else None
        )
        name = f"{impl} ({variant})" if variant else impl
        status = "" if ok_f and ok_b else f" ({(both if not ok_b else fwd).get('status', 'not run')})"
        lines.append(
            f"| {name}{status} | {seq:,} | {_ms(fwd['median_ms']) if ok_f else '-'} | "
            f"{_ms(both['median_ms']) if ok_b else '-'} | {_num(roof and 100 * roof, '.0f')}"
            f"{'%' if roof else ''} | {_num(ratio, '.1f')}{'×' if ratio else ''} |"
        )
    return intro + "\n\n" + "\n".join(lines)


def train_table(stage: dict) -> str:
    res = stage.get("results") or {}
    rows = res.get("rows", [])
    if not rows:
        return _unfinished(stage)
    by = {(r["attention"], r["seq"]): r for r in rows}

    def cells(r):
        if r is None:
            return "- | - | -"
        if r.get("status") != "ok":
            return f"{r.get('status', 'not run').split(':')[0]} | - | {_num(r.get('peak_memory_GB'), '.1f')}"
        mfu = r.get("mfu")
        return (
            f"{_num(r['tokens_per_second'])} | {_num(mfu and 100 * mfu, '.1f')}{'%' if mfu else ''} | "
            f"{_num(r.get('peak_memory_GB'), '.1f')}"
        )

    lines = [
        "| seq × batch | cosine tokens/s | cosine MFU | cosine peak GB | softmax tokens/s | softmax MFU | "
        "softmax peak GB | cosine / softmax |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seq in sorted({s for _, s in by}):
        cos, soft = by.get(("cosine", seq)), by.get(("softmax", seq))
        batch = next((r["batch"] for r in (cos, soft) if r and r.get("batch")), None)
        ratio = (
            cos["tokens_per_second"] / soft["tokens_per_second"]
            if cos and soft and cos.get("status") == soft.get("status") == "ok"
            else None
        )
        lines.append(
            f"| {seq:,} × {batch or '-'} | {cells(cos)} | {cells(soft)} | {_num(ratio, '.2f')}{'×' if ratio else ''} |"
        )
    note = f"\n\n{res['note']}" if res.get("note") else ""
    return (
        "Training steps (tokens/s; MFU = model FLOPs per step / step time / the device's dense bf16 peak; "
        "peak GB: the allocator's peak in the row's own process).\n\n" + "\n".join(lines) + note
    )


def decode_table(stage: dict) -> str:
    res = stage.get("results") or {}
    rows = [r for r in res.get("rows", []) if "context" in r]
    if not rows:
        return _unfinished(stage)
    by = {(r["attention"], r["context"]): r for r in rows}

    def cell(r):
        return "-" if r is None else _num(r["ms_per_token"], ".2f") if "ms_per_token" in r else r.get("status", "-")

    lines = ["| context | cosine ms/token | softmax ms/token |", "|---:|---:|---:|"]
    for context in sorted({c for _, c in by}):
        lines.append(f"| {context:,} | {cell(by.get(('cosine', context)))} | {cell(by.get(('softmax', context)))} |")
    ratios = res.get("ratios") or {}
    tail = "; ".join(
        f"{a} {v['contexts'][1]:,} / {v['contexts'][0]:,}: {v['longest_over_shortest']:.2f}×" for a, v in ratios.items()
    )
    return "\n".join(lines) + (f"\n\nLatency ratio, {tail}." if tail else "")


def tests_line(stage: dict) -> str:
    res = stage.get("results") or {}
    counts = res.get("counts") or {}
    if not counts:
        return f"GPU tests: {_unfinished(stage)}"
    slowest = [t for t in res.get("tests", []) if t["outcome"] != "skipped"][:3]
    failed = [t["test"] for t in res.get("tests", []) if t["outcome"] in ("failure", "error")]
    text = "GPU tests (`pytest -m gpu`): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if slowest:
        text += "; slowest: " + ", ".join(f"`{t['test'].rsplit('::', 1)[-1]}` {t['seconds']:.0f} s" for t in slowest)
    if failed:
        text += "; failed: " + ", ".join(f"`{name}`" for name in failed)
    return text + "."


def render(result: dict, source: str) -> str:
    parts = [
        header(result),
        "Kernels (`benchmarks/bench_kernels.py`):\n\n" + kernel_table(_stage(result, "bench")),
        "Training throughput (`benchmarks/train_throughput.py`):\n\n" + train_table(_stage(result, "train")),
        "Decoding (`benchmarks/decode_benchmark.py`):\n\n" + decode_table(_stage(result, "decode")),
        tests_line(_stage(result, "tests")),
        f"<sub>Generated from `{source}` by `benchmarks/render_tables.py`.</sub>",
    ]
    return "\n\n".join(parts)


def load(path: pathlib.Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a results file ({err})") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT!r} file (written by benchmarks/gpu_check.py)")
    return result


def replace_region(text: str, body: str, where: str) -> str:
    """`text` with the lines between the markers replaced by `body`; ValueError without one pair of markers."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{where}: needs one line {BEGIN} followed by one line {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body.strip()}\n{END}{tail}"


def default_results() -> list[pathlib.Path]:
    """Every GPU results file in benchmarks/results/ (not dry runs)."""
    found = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT and not data.get("dry_run"):
            found.append(path)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "results",
        nargs="*",
        type=pathlib.Path,
        help="results files (default: benchmarks/results/*.json written by gpu_check.py, not dry runs)",
    )
    p.add_argument("--markdown", type=pathlib.Path, default=ROOT / "README.md")
    p.add_argument("--print", action="store_true", help="print the tables; write nothing")
    args = p.parse_args(argv)
    try:
        paths = args.results or default_results()
        if not paths:
            raise ValueError("no GPU results files in benchmarks/results/ (benchmarks/gpu_check.py writes them)")
        body = "\n\n".join(render(load(path), _shown(path)) for path in paths)
        if args.print:
            print(body)
            return 0
        text = args.markdown.read_text() if args.markdown.is_file() else None
        if text is None:
            raise ValueError(f"{args.markdown}: no such file")
        args.markdown.write_text(replace_region(text, body, str(args.markdown)))
    except ValueError as err:
        print(f"render_tables.py: {err}", file=sys.stderr)
        return 2
    print(f"rewrote the GPU tables of {args.markdown} from {', '.join(map(_shown, paths))}")
    return 0


def _shown(path: pathlib.Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
