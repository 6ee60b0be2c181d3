"""The Pallas TPU kernels (`pallas_kernels/cosine_attn/pallas_tpu.py`) against the float32 spec, on the CPU.

  * TPU interpret mode (`pltpu.InterpretParams()`: TPU memory spaces and the grid's order simulated)
    vs `reference.py`: outputs, final states and every gradient, through the raw core and through
    the public op with the dispatch pointed at the TPU kernels;
  * Mosaic lowering: `jax.export` of forward + backward for platform "tpu" under an abstract TPU of
    each generation in the launch table, which checks block shapes against the TPU's tiles;
  * the backward's cost: the number of kernel launches, and no d x d per chunk or T x T array
    anywhere in the program (the state lives in VMEM);
  * the launch table's TPU rows and bad input.
There is no TPU test marked to run on a device: no TPU has been available to this project.
"""

import dataclasses
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cottention_jax as ca
from cottention_jax import _cosine_local
from pallas_kernels.cosine_attn import launch_table, pallas_tpu
from tests._util import REPO_ROOT, core_specs, core_vs_reference, fresh_key, padding_mask, random_qkv, rel_error

F32_TOL, LOW_TOL = 1e-5, 2e-2  # float32 (interpret mode is exact f32); bf16 / fp16
Sizes = pallas_tpu.TpuBlockSizes


def _tol(dtype):
    return F32_TOL if jnp.dtype(dtype) == jnp.float32 else LOW_TOL


@pytest.fixture
def on_tpu(monkeypatch):
    """Point implementation="pallas" at the TPU kernels, as on a TPU backend (interpret=True runs them)."""
    monkeypatch.setattr(_cosine_local, "pallas_platform", lambda: "tpu")


# ----------------------------------------------------------------------------- the raw core


def _core_inputs(b, t, h, kv, dk, dv, dtype):
    q, k, v, _ = random_qkv(fresh_key(), b, t, h, kv, dk, dv, dtype)
    key_scale = jax.random.uniform(fresh_key(), (b, t, h), minval=0.1, maxval=1.0)
    s0 = jax.random.normal(fresh_key(), (b, h, dk, dv))
    return q, k, v, key_scale, s0


def _core(sizes):
    return lambda *a: pallas_tpu.causal_linear_attention_pallas_tpu(*a, interpret=True, block_sizes=sizes)


def _core_compare(args, sizes):
    """Forward and VJP of the TPU core vs the quadratic reference, held to the dtype's tolerance."""
    core_vs_reference(_core(sizes), args, _tol(args[0].dtype))


# (b, t, h, kv, dk, dv, dtype, sizes): 10 chunks of 16 with a padded last one (the scales' 8-chunk
# blocks then pad to 16) and GQA 2; head dims 96 / 64 pad to 128; 256 / 192 give two head-dim
# blocks per kernel. Few grid steps each: TPU interpret mode costs about 30 ms per grid step here,
# and each case compiles for seconds.
CORE_CASES = [
    (1, 150, 2, 1, 96, 64, jnp.float32, Sizes(chunk=16)),
    (1, 64, 2, 1, 256, 192, jnp.bfloat16, Sizes(chunk=32, block_k=128, block_v=128)),
]


def _core_id(c):
    b, t, h, kv, dk, dv, dtype, sizes = c
    launch = "" if sizes is None else f"-C{sizes.chunk}-bk{sizes.block_k}-bv{sizes.block_v}"
    return f"{jnp.dtype(dtype).name}-b{b}t{t}h{h}kv{kv}-dk{dk}dv{dv}{launch}"


@pytest.mark.parametrize("case", CORE_CASES, ids=_core_id)
def test_core_interpret_matches_reference(case):
    b, t, h, kv, dk, dv, dtype, sizes = case
    _core_compare(_core_inputs(b, t, h, kv, dk, dv, dtype), sizes)


def test_state_continues_across_calls():
    """Two calls, the second starting from the first's final state, equal one call over the whole
    sequence (outputs and final state); the split (40) falls inside a chunk of 32."""
    q, k, v, w, s0 = _core_inputs(1, 96, 2, 2, 64, 64, jnp.float32)
    run = _core(Sizes(chunk=32))
    out, final = run(q, k, v, w, s0)
    out1, mid = run(q[:, :40], k[:, :40], v[:, :40], w[:, :40], s0)
    out2, final2 = run(q[:, 40:], k[:, 40:], v[:, 40:], w[:, 40:], mid)
    assert rel_error(jnp.concatenate([out1, out2], axis=1), out) <= F32_TOL
    assert rel_error(final2, final) <= F32_TOL


# ----------------------------------------------------------------------------- through the public op


# (dtype, heads, kv_heads, dk, dv, seq, padding, stabilize, initial state, chunk_size): chunk_size
# None takes the launch of this device (on the CPU the fallback's 128, longer than seq 5)
OP_CASES = [
    (jnp.float32, 2, 1, 64, 32, 70, "left", "query", True, 32),
    (jnp.bfloat16, 2, 1, 64, 64, 64, "right", "value", True, 32),
    (jnp.float16, 2, 2, 32, 32, 5, "none", "value", False, None),
]


def _op_id(c):
    dtype, h, kv, dk, dv, t, pad, stab, init, chunk = c
    return f"{jnp.dtype(dtype).name}-h{h}kv{kv}-dk{dk}dv{dv}-t{t}-{pad}-{stab}{'-init' if init else ''}-C{chunk}"


@pytest.mark.parametrize("case", OP_CASES, ids=_op_id)
def test_public_op_on_tpu_kernels_matches_reference(case, on_tpu):
    dtype, h, kv, dk, dv, t, pad, stab, init, chunk = case
    b = 2
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, dk, dv, dtype)
    mask = padding_mask(pad, b, t)
    kv0 = 0.5 * jax.random.normal(fresh_key(), (b, h, dk, dv)) if init else jnp.zeros((b, h, dk, dv))
    count0 = jax.random.randint(fresh_key(), (b,), 0, 50) if init else jnp.zeros((b,), jnp.int32)
    cot = jax.random.normal(fresh_key(), (b, t, h, dv))
    cot_kv = jax.random.normal(fresh_key(), (b, h, dk, dv))

    def grads(impl):
        def loss(q, k, v, m, kv0):
            out, state = ca.cosine_attention(
                q,
                k,
                v,
                m,
                causal=True,
                padding_mask=mask,
                stabilize=stab,
                initial_state=ca.CosineAttentionState(kv0, count0),
                return_state=True,
                implementation=impl,
                chunk_size=chunk if impl == "pallas" else None,
                interpret=impl == "pallas",
            )
            return jnp.sum(out.astype(jnp.float32) * cot) + jnp.sum(state.kv * cot_kv), (out, state.kv)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(q, k, v, m, kv0)

    got, (out, final) = grads("pallas")
    want, (out_ref, final_ref) = grads("reference")
    tol = _tol(dtype)
    assert out.dtype == dtype
    assert rel_error(out, out_ref) <= tol and rel_error(final, final_ref) <= tol
    for name, g, g_ref in zip(("dq", "dk", "dv", "d_stabilizer", "d_initial_kv"), got, want, strict=True):
        # d m in 16-bit inputs sums contributions of both signs; its relative error is bounded
        # loosely there (the GPU kernels' test explains the cancellation)
        bound = 3 * tol if name == "d_stabilizer" and dtype != jnp.float32 else tol
        assert rel_error(g, g_ref) <= bound, (name, rel_error(g, g_ref))


def test_tpu_kernels_run_in_the_sequence_parallel_path():
    """The sequence-parallel op (2 simulated devices, a process of its own) with the dispatch on the
    TPU kernels equals the one-device reference: outputs, final state and gradients."""
    script = """
import os, json
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
import cottention_jax as ca
from cottention_jax import _cosine_local, parallel
from tests._util import random_qkv, rel_error
_cosine_local.pallas_platform = lambda: "tpu"
q, k, v, m = random_qkv(jax.random.PRNGKey(1), 1, 64, 2, 1, 16, 16)
mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("seq",))
def loss(f, *a):
    out, state = f(*a, causal=True, return_state=True)
    return jnp.sum(out * jnp.cos(out)) + jnp.sum(state.kv ** 2), out
def sharded(*a, **kw):
    return parallel.sequence_parallel_cosine_attention(
        *a, mesh=mesh, implementation="pallas", chunk_size=16, interpret=True, **kw)
def single(*a, **kw):
    return ca.cosine_attention(*a, implementation="reference", **kw)
got = jax.jit(jax.grad(lambda *a: loss(sharded, *a), argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, m)
want = jax.jit(jax.grad(lambda *a: loss(single, *a), argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, m)
text = jax.jit(lambda *a: loss(sharded, *a)[0]).lower(q, k, v, m).as_text()
errors = {n: rel_error(a, b) for n, a, b in zip(("dq", "dk", "dv", "dm"), got[0], want[0])}
errors["out"] = rel_error(got[1], want[1])
print(json.dumps({"errors": errors, "sharded": "shard_map" in text or "sdy.manual" in text}))
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["sharded"]
    assert max(result["errors"].values()) <= F32_TOL, result["errors"]


def test_the_layer_runs_the_tpu_kernels_unchanged(on_tpu, monkeypatch):
    """`CosineAttention(implementation="pallas")` on the TPU kernels equals the same layer (the same
    parameters) on the reference: output and parameter gradients, with left padding."""
    from flax import nnx  # noqa: PLC0415

    calls = []
    kernel = pallas_tpu.causal_linear_attention_pallas_tpu
    monkeypatch.setattr(
        pallas_tpu, "causal_linear_attention_pallas_tpu", lambda *a, **kw: calls.append(1) or kernel(*a, **kw)
    )

    b, t, f = 2, 19, 32
    layer = ca.CosineAttention(
        num_heads=2,
        in_features=f,
        num_kv_heads=1,
        causal=True,
        implementation="pallas",
        interpret=True,
        rngs=nnx.Rngs(7),
    )
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask("left", b, t)

    @nnx.jit
    def loss_and_grads(model):
        return nnx.value_and_grad(lambda m: jnp.sum(jnp.sin(m(x, padding_mask=mask))))(model)

    value, grads = loss_and_grads(layer)
    assert calls  # the dispatch reached the TPU kernels
    layer.implementation, layer.interpret = "reference", False
    value_ref, grads_ref = loss_and_grads(layer)
    assert abs(float(value - value_ref)) <= F32_TOL * max(1.0, abs(float(value_ref)))
    for (path, g), (_, g_ref) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(grads_ref), strict=True):
        assert rel_error(g[...], g_ref[...]) <= F32_TOL, path


# ----------------------------------------------------------------------------- what the backward costs


def _loss_and_grads(sizes, interpret=True):
    def loss(q, k, v, w, s0):
        out, final = pallas_tpu.causal_linear_attention_pallas_tpu(
            q, k, v, w, s0, interpret=interpret, block_sizes=sizes
        )
        return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(final**2)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside its equations (jit, custom_vjp, ...),
    except the insides of the kernels themselves."""
    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name == "pallas_call":
            continue
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_backward_launches_two_kernels_and_keeps_no_per_chunk_state():
    """Forward + backward = 3 kernel launches (forward; dq; dk+dv), and no array outside the
    kernels has a chunk-count x d x d or T x T shape: the states never leave VMEM."""
    b, t, h, kv, d, chunk = 1, 320, 2, 1, 128, 32  # 10 chunks; T differs from H * D (256)
    args = _core_inputs(b, t, h, kv, d, d, jnp.float32)
    closed = jax.make_jaxpr(_loss_and_grads(Sizes(chunk=chunk), interpret=False))(*args)
    eqns = list(_equations(closed.jaxpr))
    assert sum(e.primitive.name == "pallas_call" for e in eqns) == 3
    shapes = {tuple(v.aval.shape) for e in eqns for v in e.outvars if hasattr(v.aval, "shape")}
    n_chunks = t // chunk
    per_chunk = [s for s in shapes if len(s) >= 3 and s[-2:] == (d, d) and n_chunks in s[:-2]]
    quadratic = [s for s in shapes if s.count(t) >= 2]
    assert per_chunk == [] and quadratic == [], (per_chunk, quadratic)


def test_residuals_are_the_inputs_only():
    """The custom_vjp keeps q, k, v, key_scale and S0 for the backward, and nothing else."""
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415
    import re  # noqa: PLC0415

    from jax.ad_checkpoint import print_saved_residuals  # noqa: PLC0415

    args = _core_inputs(1, 64, 2, 1, 32, 32, jnp.float32)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(_core(Sizes(chunk=16)), *args)
    lines = printed.getvalue().strip().splitlines()
    assert all("from the argument" in line for line in lines), lines
    shapes = sorted(tuple(int(x) for x in re.match(r"\w+\[([\d,]*)\]", line)[1].split(",") if x) for line in lines)
    assert shapes == sorted(tuple(a.shape) for a in args), lines


# ----------------------------------------------------------------------------- Mosaic lowering


def _tpu_rows() -> list[dict]:
    return [e for e in launch_table.load_table(launch_table.shipped_table_path()) if e.get("backend") == "tpu"]


def _export_for_tpu(device_kind, fn, *args):
    """jax.export of jit(fn) for platform tpu with an abstract TPU of `device_kind` as the target:
    runs the Pallas -> Mosaic lowering (block shapes against the TPU's tiles, supported ops)."""
    from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh  # noqa: PLC0415

    tpu = AbstractDevice(device_kind=device_kind, num_cores=1, platform="tpu")
    with use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=tpu)):
        return jax.export.export(jax.jit(fn), platforms=["tpu"])(*args)


def _lowering_cases() -> list[tuple]:
    """Every launch of the table (under the first generation that lists it) at d_k = d_v in
    {64, 128, 256}, once per distinct launch after the blocks are clipped to the padded head dim."""
    cases: dict[tuple, tuple] = {}
    for row in _tpu_rows():
        for dim in (64, 128, 256):
            padded = pallas_tpu.tpu_padded_head_dim(dim)
            key = (row["chunk"], min(row["block_k"], padded), min(row["block_v"], padded), row["dtype"], dim)
            cases.setdefault(key, (row["device"], row["chunk"], row["block_k"], row["block_v"], row["dtype"], dim))
    return sorted(cases.values())


@pytest.mark.parametrize("case", _lowering_cases(), ids=lambda c: "{}-C{}-bk{}-bv{}-{}-d{}".format(*c))
def test_forward_and_backward_lower_for_tpu(case):
    """GQA, T = 700 (pads to a multiple of the chunk) for each launch of the table."""
    device, chunk, block_k, block_v, dtype, dim = case
    b, t, h, kv = 1, 700, 4, 2
    args = core_specs(b, t, h, kv, dim, dtype)
    sizes = Sizes(chunk=chunk, block_k=block_k, block_v=block_v)
    exported = _export_for_tpu(device, _loss_and_grads(sizes, interpret=False), *args)
    assert exported.platforms == ("tpu",)
    assert exported.mlir_module().count("tpu_custom_call") == 3  # forward, dq, dk+dv


def test_the_table_has_a_tpu_row_for_each_generation_and_no_measurement_claimed():
    rows = _tpu_rows()
    assert {r["device"] for r in rows} >= {"TPU v4", "TPU v5 lite", "TPU v5", "TPU v6 lite"}
    assert all(r["source"].startswith("not measured") for r in rows)
    for r in rows:  # every row is a launch TpuBlockSizes accepts
        assert Sizes.from_entry(r).to_entry() == {k: r[k] for k in ("backend", *launch_table.TPU_FIELDS)}


@pytest.mark.parametrize(
    "kind,dtype,dim,want",
    [
        ("TPU v5 lite", "bfloat16", 64, Sizes(128, 128, 128)),  # 64 pads to 128
        ("TPU v5 lite", "float32", 256, Sizes(128, 256, 256)),
        ("TPU v5", "bfloat16", 128, Sizes(128, 128, 128)),
        ("TPU v6 lite", "bfloat16", 192, Sizes(256, 256, 256)),
        ("TPU v6 lite", "float16", 128, Sizes(256, 128, 128)),  # no float16 rows: the bfloat16 row
        ("TPU v9 future", "bfloat16", 128, Sizes()),  # no row: the fallback
    ],
)
def test_default_launch_by_generation(kind, dtype, dim, want):
    device = types.SimpleNamespace(device_kind=kind)
    assert Sizes.get_default(dtype, dim, dim, device=device) == want


def test_gpu_and_tpu_rows_never_serve_each_other():
    assert launch_table.find_entry("TPU v5 lite", None, "bfloat16", 128) is None  # backend "gpu"
    assert launch_table.find_entry("NVIDIA H100 80GB HBM3", "9.0", "bfloat16", 128, backend="tpu") is None


# ----------------------------------------------------------------------------- dispatch and bad input


def test_tpu_dispatch_keeps_xla_as_the_default(monkeypatch):
    """On a TPU backend, "pallas" means the TPU kernels, but the default stays "xla" (unmeasured)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert _cosine_local.pallas_platform() == "tpu"
    assert ca.default_implementation(causal=True) == "xla"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert _cosine_local.pallas_platform() == "gpu"  # interpret mode on the CPU runs the GPU kernels


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"chunk": 48}, "chunk must be a power of two"),
        ({"chunk": 8}, "chunk must be a power of two"),
        ({"block_k": 64}, "block_k must be a multiple of 128"),
        ({"block_v": 200}, "block_v must be a multiple of 128"),
    ],
)
def test_block_sizes_reject_bad_values(fields, match):
    with pytest.raises(ValueError, match=match):
        Sizes(**fields)


def _zeros(b, t, h, kv, dk, dv):
    """q, k, v, key_scale, S0 as numpy zeros: the checks read shapes only (nothing compiles)."""
    shapes = ((b, t, h, dk), (b, t, kv, dk), (b, t, kv, dv), (b, t, h), (b, h, dk, dv))
    return [np.zeros(s, np.float32) for s in shapes]


def test_core_rejects_bad_input():
    q, k, v, w, s0 = _zeros(1, 16, 2, 1, 32, 32)
    core = pallas_tpu.causal_linear_attention_pallas_tpu
    with pytest.raises(ValueError, match=r"key_scale must have shape \(B, T, H\) = \(1, 16, 2\)"):
        core(q, k, v, w[:, :8], s0, interpret=True)
    with pytest.raises(ValueError, match=r"initial_state must have shape"):
        core(q, k, v, w, s0[:, :1], interpret=True)
    with pytest.raises(ValueError, match=r"H % KV == 0; got q.shape=\(1, 16, 3, 32\), k.shape=\(1, 16, 2, 32\)"):
        core(*_zeros(1, 16, 3, 2, 32, 32), interpret=True)
    with pytest.raises(ValueError, match="block_sizes must be a TpuBlockSizes"):
        core(q, k, v, w, s0, interpret=True, block_sizes=dataclasses.asdict(Sizes()))
    with pytest.raises(ValueError, match=r"block_k=256 .* must divide the padded head dims \(d_k 384 -> 384"):
        core(*_zeros(1, 16, 1, 1, 384, 32), interpret=True, block_sizes=Sizes(block_k=256))


def test_tpu_table_rows_are_validated(tmp_path):
    row = {"backend": "tpu", "device": "TPU v5 lite", "dtype": "bfloat16", "head_dim": 128, "chunk": 128}
    with pytest.raises(ValueError, match="missing field 'block_k'"):
        launch_table.validate_entry(row)
    with pytest.raises(ValueError, match="positive integers"):
        launch_table.validate_entry({**row, "block_k": 0, "block_v": 128})
    with pytest.raises(ValueError, match="backend must be 'gpu' or 'tpu'"):
        launch_table.validate_entry({**row, "backend": "npu"})
    path = launch_table.write_table(tmp_path / "t.json", [{**row, "block_k": 128, "block_v": 256}])
    assert launch_table.find_entry("TPU v5 lite", None, "bfloat16", 128, [path], backend="tpu")["block_v"] == 256
