"""benchmarks/tpu_hbm_model.py: the paper model of HBM traffic (issue 23) against independent counts.

The kernel's traffic is recounted by stepping through each planned pallas_call's grid the way Pallas
TPU pipelines BlockSpecs (a block is copied in when its block index changes between consecutive
steps, an output block is written back when its index changes and at the end); the xla form's
(fused scenario) by listing the arrays each fused matmul of xla.py reads and writes, by shape. Pure
arithmetic: no device, no jax calls.
"""

import itertools
import math

import pytest

from benchmarks import tpu_hbm_model as m
from tests._util import REPO_ROOT

BF16, F32 = 2, 4


def _nbytes(shape, itemsize):
    return math.prod(shape) * itemsize


def _blockspec_traffic(grid, inputs, outputs):
    """HBM bytes of one pallas_call: each spec is (block bytes, index map over the grid indices)."""
    total = 0
    for block, index_map in [*inputs, *outputs]:
        last = None
        for idx in itertools.product(*map(range, grid)):  # the grid in order, last axis fastest
            cur = index_map(*idx)
            if cur != last:  # an input's new block is fetched; an output's finished block is written back
                total += block
            last = cur
    return total


def _kernel_count(b, h, t, d, c, s):
    """(forward, backward) bytes of the planned kernel, from its grids and BlockSpecs."""
    tp, dp = -(-t // c) * c, -(-d // 128) * 128
    nb, nc = dp // 128, tp // c
    rev = lambda i: nc - 1 - i  # noqa: E731  (the reverse sweep's chunk index)
    fwd = _blockspec_traffic(
        (b, h, nb, nc),
        inputs=[
            (c * dp * s, lambda bi, hi, j, ci: (bi, ci, hi)),  # q (C, Dk)
            (c * dp * s, lambda bi, hi, j, ci: (bi, ci, hi)),  # k (C, Dk)
            (c * 128 * s, lambda bi, hi, j, ci: (bi, ci, hi * nb + j)),  # v (C, BV)
            (c * 1 * F32, lambda bi, hi, j, ci: (bi, hi, ci, 0)),  # key_scale (C, 1)
            (dp * 128 * F32, lambda bi, hi, j, ci: (bi, hi, 0, j)),  # S0 (Dk, BV)
        ],
        outputs=[
            (c * 128 * s, lambda bi, hi, j, ci: (bi, ci, hi * nb + j)),  # out (C, BV)
            (dp * 128 * F32, lambda bi, hi, j, ci: (bi, hi, 0, j)),  # S_T (Dk, BV)
        ],
    )
    dq = _blockspec_traffic(
        (b, h, nb, nc),
        inputs=[
            (c * 128 * s, lambda bi, hi, i, ci: (bi, ci, hi * nb + i)),  # k (C, BK)
            (c * dp * s, lambda bi, hi, i, ci: (bi, ci, hi)),  # v (C, Dv)
            (c * F32, lambda bi, hi, i, ci: (bi, hi, ci, 0)),  # key_scale
            (c * dp * s, lambda bi, hi, i, ci: (bi, ci, hi)),  # dO (C, Dv)
            (128 * dp * F32, lambda bi, hi, i, ci: (bi, hi, i, 0)),  # S0 (BK, Dv)
        ],
        outputs=[(c * 128 * s, lambda bi, hi, i, ci: (bi, ci, hi * nb + i))],  # dq (C, BK)
    )
    row = lambda bi, hi, ci: (bi, rev(ci), hi)  # noqa: E731
    dkdv = _blockspec_traffic(
        (b, h, nc),
        inputs=[(c * dp * s, row)] * 4  # q, k, v, dO
        + [
            (c * F32, lambda bi, hi, ci: (bi, hi, rev(ci), 0)),  # key_scale
            (dp * dp * F32, lambda bi, hi, ci: (bi, hi, 0, 0)),  # dS_T
        ],
        outputs=[(c * dp * s, row)] * 2  # dk, dv
        + [
            (c * F32, lambda bi, hi, ci: (bi, hi, rev(ci), 0)),  # d key_scale
            (dp * dp * F32, lambda bi, hi, ci: (bi, hi, 0, 0)),  # dS0
        ],
    )
    # the wrapper: key_scale (B, T, H) -> (B, H, Tp, 1) float32 in each pass, its cotangent back
    w, wp = _nbytes((b, t, h), F32), _nbytes((b, h, tp, 1), F32)
    x, xp = _nbytes((b, t, h, d), s), _nbytes((b, tp, h * dp), s)
    st, stp = _nbytes((b, h, d, d), F32), _nbytes((b, h, dp, dp), F32)
    fwd_wrap, bwd_wrap = w + wp, 2 * (w + wp)
    if (tp, dp) != (t, d):  # pad q, k, v (and dO) on the way in, slice out (dq, dk, dv) on the way out
        fwd_wrap += 3 * (x + xp) + (xp + x)
        bwd_wrap += 4 * (x + xp) + 3 * (xp + x)
    if dp != d:  # pad S0 / slice S_T; pad S0 and dS_T / slice dS0
        fwd_wrap += 2 * (st + stp)
        bwd_wrap += 3 * (st + stp)
    return fwd + fwd_wrap, dq + dkdv + bwd_wrap


@pytest.mark.parametrize(
    "b,h,t,d,c,s",
    [
        (1, 2, 256, 128, 128, BF16),  # the design point's shape, small
        (2, 3, 384, 256, 128, F32),  # two head-dim blocks: q, k (fwd) and v, dO (dQ) read twice
        (1, 2, 200, 96, 128, BF16),  # T and D padded by the wrapper
    ],
)
def test_kernel_bytes_match_a_count_over_the_grids(b, h, t, d, c, s):
    shape = m.Shape(b, h, t, d, s)
    terms, sym = m.kernel_terms(shape, c), m.kernel_symbols(shape, c)
    fwd, bwd = _kernel_count(b, h, t, d, c, s)
    assert m.total_bytes(terms, sym, "fwd") == fwd
    assert m.total_bytes(terms, sym, "bwd") == bwd


def test_xla_fused_bytes_match_a_count_of_its_arrays():
    """B=1, H=2, T=100 (padded to 128), D=8, chunk 32, bfloat16: every fused matmul's operands and
    results by shape, as xla.py forms them."""
    b, h, t, d, c, s = 1, 2, 100, 8, 32, BF16
    n = -(-t // c)
    x = _nbytes((b, t, h, d), s)  # q, k, v, dO, out, dq, dk, dv
    w = _nbytes((b, t, h), F32)  # key_scale, d key_scale
    st = _nbytes((b, h, d, d), F32)  # S0, S_T, dS_T, dS0
    states = _nbytes((b, h, n, d, d), F32)  # U, H, Q^T dO, G
    scores = _nbytes((b, h, n, c, c), F32)  # (Q K~^T) * M, dp, (Q K^T) * M
    rows = _nbytes((b, h, n, c, d), F32)  # a (C, D) matmul output per chunk, float32
    fwd = [
        ([x, st], []),  # max |v|, |S0|
        ([x, w, x], [states]),  # U = K~^T V
        ([states, st], [states]),  # H = S0 + exclusive cumsum
        ([st, st], [st]),  # S_T
        ([x, x, w], [scores]),  # scores
        ([scores, x], [rows]),  # scores V
        ([x, states, rows], [x]),  # Q H + scores V -> out
    ]
    bwd = [
        ([x, st], []),
        ([x, w, x], [states]),  # U again
        ([states, st], [states]),  # H again
        ([x, x], [scores]),  # dp = dO V^T, masked
        ([x, states], [rows]),  # dO H^T
        ([scores, w, x, rows], [x]),  # (dp w) K + dO H^T -> dq
        ([x, x], [states]),  # Q^T dO
        ([states, st], [states]),  # G
        ([x, states], [rows]),  # V G^T
        ([scores, x, rows], [rows]),  # dp^T Q + V G^T = dK~ (float32)
        ([x, x], [scores]),  # Q K^T, masked
        ([x, states], [rows]),  # K G
        ([scores, x, rows, w], [x]),  # (scores^T dO + K G) w -> dv
        ([rows, w, x], [x, w]),  # dk = w dK~, d key_scale = <dK~, k>
        ([st, st], [st]),  # dS0
    ]
    count = lambda ops: sum(sum(r) + sum(wr) for r, wr in ops)  # noqa: E731
    sym = m.xla_symbols(m.Shape(b, h, t, d, s), c)
    fused = m.xla_terms(True)
    assert m.total_bytes(fused, sym, "fwd") == count(fwd)
    assert m.total_bytes(fused, sym, "bwd") == count(bwd)
    # the unfused scenario only adds traffic, step by step, and shares the step names
    unfused = m.xla_terms(False)
    assert [t.name for t in fused] == [t.name for t in unfused]
    for f, u in zip(fused, unfused, strict=True):
        fb = m.term_bytes(f.read, sym) + m.term_bytes(f.written, sym)
        ub = m.term_bytes(u.read, sym) + m.term_bytes(u.written, sym)
        assert ub >= fb or f.name.startswith(("dp^T Q", "(dp w) K", "scores^T dO", "dk = w dK~"))


def test_flops_match_the_matmul_shapes():
    b, h, t, d = 2, 3, 512, 128
    for c in (64, 128):
        n = t // c
        mm = lambda mm_, k_, n_: 2 * mm_ * k_ * n_  # noqa: E731
        fwd = b * h * n * (mm(c, d, c) + mm(c, c, d) + mm(d, c, d) + mm(c, d, d))
        bwd = b * h * n * (5 * mm(c, d, c) + 5 * mm(c, d, d))  # five C x C and five D x D products
        shape = m.Shape(b, h, t, d, BF16)
        assert m.xla_forward_flops(shape, c) == fwd
        assert m.xla_backward_flops(shape, c) == bwd
        assert m.kernel_forward_flops(shape, c) == fwd  # one d_v block: no recomputation
        assert m.kernel_backward_flops(shape, c) == bwd + b * h * n * mm(c, d, c)  # dO V^T twice


def test_kernel_bytes_are_linear_in_t_and_xla_states_go_as_t_over_c():
    c = 128

    def kernel(t):
        shape = m.Shape(2, 4, t, 128, BF16)
        return m.total_bytes(m.kernel_terms(shape, c), m.kernel_symbols(shape, c))

    t0 = 4 * c
    slope = kernel(2 * t0) - kernel(t0)
    assert kernel(3 * t0) - kernel(2 * t0) == slope and kernel(8 * t0) - kernel(t0) == 7 * slope
    # what does not grow with T is the five (B, H, D, D) float32 states of fwd+bwd: S0, S_T; S0, dS_T, dS0
    assert kernel(t0) - slope == 5 * 2 * 4 * 128 * 128 * 4

    def xla_state_bytes(t, chunk):
        sym = m.xla_symbols(m.Shape(2, 4, t, 128, BF16), chunk)
        return sum(
            (tm.read.get("P", 0) + tm.written.get("P", 0)) * sym["P"] for tm in m.xla_terms(True) + m.xla_terms(False)
        )

    base = xla_state_bytes(4096, 64)
    assert xla_state_bytes(8192, 64) == 2 * base  # T / C doubles
    assert xla_state_bytes(4096, 128) * 2 == base  # T / C halves
    assert xla_state_bytes(8192, 128) == base


def test_main_prints_the_table(capsys):
    assert m.main(["--batch", "2", "--heads", "2", "--seq", "1024", "--xla-chunk", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MODEL, NOT MEASURED")
    for row in ("| fwd | HBM GB |", "| fwd+bwd | HBM GB |", "TPU v5e: roofline ms", "TPU v5p: roofline ms"):
        assert row in out


def test_the_xla_chunk_defaults_to_the_forms_default(capsys):
    from pallas_kernels.cosine_attn import xla  # noqa: PLC0415

    assert m.main(["--batch", "1", "--heads", "1", "--seq", "256", "--totals-only"]) == 0
    out = capsys.readouterr().out
    assert f"xla chunk Cx={xla.DEFAULT_CHUNK}," in out and "Kernel, per term" not in out


@pytest.mark.parametrize(
    "argv,message",
    [(["--seq", "0"], "--seq must be >= 1"), (["--dtype", "int8"], "--dtype"), (["--chunk", "100"], "--chunk")],
)
def test_bad_arguments_are_one_line_errors(capsys, argv, message):
    assert m.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tpu_hbm_model: {message}") and err.count("\n") == 1


def test_notes_carry_the_scripts_tables():
    """The tables pasted in benchmarks/NOTES.md are what the script prints at the design point."""
    notes = (REPO_ROOT / "benchmarks" / "NOTES.md").read_text()
    assert "## TPU kernel: HBM traffic, a model (issue 23)" in notes
    for dtype, terms in (("bfloat16", True), ("float32", False)):
        shape = m.Shape(8, 16, 16384, 128, m.ITEMSIZE[dtype])
        assert m.render(shape, 64, 128, dtype, terms=terms) in notes, dtype
