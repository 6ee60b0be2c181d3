"""Runs on 8 simulated CPU devices (a process of its own: the device count is fixed at start-up).

Called by tests/test_parallel.py as `python -m tests._sequence_parallel_worker <group>`;
prints one JSON object: case name -> measured errors / facts. The assertions live in
test_parallel.py; this file only computes.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import cottention_jax as ca  # noqa: E402
from cottention_jax import parallel  # noqa: E402
from cottention_jax.sharding import collectives  # noqa: E402
from tests._util import padding_mask, random_qkv, rel_error  # noqa: E402

B, H, DK, DV = 2, 4, 16, 8

# name: (seq devices, data devices, causal, padding, kv heads, stabilize, exchange, implementation, T)
# T = 320: 40 positions per device when split 8 ways, fewer than the 64 of one chunk; 160 / 2 = 80
# is not a multiple of 64 either.
OP_CASES = {
    "causal-split2": (2, 1, True, "none", 2, "value", "all_gather", "xla", 320),
    "causal-split4-left": (4, 1, True, "left", 2, "value", "all_gather", "xla", 320),
    "causal-split8-right": (8, 1, True, "right", 2, "value", "all_gather", "xla", 320),
    "causal-split8-gqa4-query-left": (8, 1, True, "left", 1, "query", "all_gather", "xla", 320),
    "causal-split4-scan-right": (4, 1, True, "right", 2, "value", "scan", "xla", 320),
    "causal-split8-scan-query": (8, 1, True, "none", 2, "query", "scan", "xla", 320),
    "causal-data2xseq4-left": (4, 2, True, "left", 2, "value", "all_gather", "xla", 320),
    "causal-split2-pallas-left": (2, 1, True, "left", 2, "value", "all_gather", "pallas", 160),
    # through cosine_attention(sequence_axis="seq") under jax.set_mesh, as the layers call it
    "via-op-causal-data2xseq4-right": (4, 2, True, "right", 2, "value", "all_gather", "via-op", 320),
    "via-op-bidirectional-split4-left": (4, 1, False, "left", 2, "value", "all_gather", "via-op", 320),
    "bidirectional-split2-right": (2, 1, False, "right", 2, "value", "all_gather", "xla", 320),
    "bidirectional-split8-left": (8, 1, False, "left", 1, "value", "all_gather", "xla", 320),
}


def _mesh(seq: int, data: int) -> Mesh:
    return Mesh(np.array(jax.devices()[: seq * data]).reshape(data, seq), ("data", "seq"))


def compare_op(seq, data, causal, pad, kv, stabilize, exchange, impl, t) -> dict:
    """Outputs, final state and gradients (q, k, v, stabilizer, initial state) vs one device."""
    mesh = _mesh(seq, data)
    q, k, v, m = random_qkv(jax.random.PRNGKey(seq * 10 + data), B, t, H, kv, DK, DV)
    mask = padding_mask(pad, B, t, jax.random.PRNGKey(3))
    count0 = jnp.array([3, 0], jnp.int32)
    kv0 = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (B, H, DK, DV))
    cot = jax.random.normal(jax.random.PRNGKey(9), (B, t, H, DV))
    cot_kv = jax.random.normal(jax.random.PRNGKey(11), (B, H, DK, DV))

    def loss(attend, q, k, v, m, kv0):
        if not causal:
            out = attend(q, k, v, m, causal=False, padding_mask=mask)
            return jnp.sum(out * cot), (out, None, None)
        out, state = attend(
            q,
            k,
            v,
            m,
            causal=True,
            padding_mask=mask,
            return_state=True,
            initial_state=ca.CosineAttentionState(kv0, count0),
        )
        return jnp.sum(out * cot) + jnp.sum(state.kv * cot_kv), (out, state.kv, state.count)

    def single(*a, **kw):
        return ca.cosine_attention(*a, stabilize=stabilize, implementation="reference", **kw)

    def sharded(*a, **kw):
        if impl == "via-op":
            return ca.cosine_attention(*a, stabilize=stabilize, implementation="xla", sequence_axis="seq", **kw)
        return parallel.sequence_parallel_cosine_attention(
            *a, mesh=mesh, stabilize=stabilize, exchange=exchange, implementation=impl, interpret=impl == "pallas", **kw
        )

    argnums = (0, 1, 2, 3, 4) if causal else (0, 1, 2, 3)
    grad = lambda attend: jax.jit(jax.grad(lambda *a: loss(attend, *a), argnums=argnums, has_aux=True))  # noqa: E731
    want_g, (want_o, want_kv, want_n) = grad(single)(q, k, v, m, kv0)
    with jax.set_mesh(mesh):
        got_g, (got_o, got_kv, got_n) = grad(sharded)(q, k, v, m, kv0)
        text = jax.jit(lambda *a: loss(sharded, *a)[0]).lower(q, k, v, m, kv0).as_text()
    errors = {"out": rel_error(got_o, want_o), "shard_map": int("shard_map" in text or "sdy.manual" in text)}
    if causal:
        errors.update(final_kv=rel_error(got_kv, want_kv), final_count=int(jnp.max(jnp.abs(got_n - want_n))))
    names = ("dq", "dk", "dv", "dstabilizer", "dinitial_kv")[: len(argnums)]  # no initial state unless causal
    for name, g, w in zip(names, got_g, want_g, strict=True):
        errors[name] = rel_error(g, w)
    if mask is not None:
        errors["padded_out_max"] = float(jnp.max(jnp.abs(jnp.where(mask[:, :, None, None], 0.0, got_o))))
    return errors


def attention_collectives(seq: int, t: int, exchange: str) -> list[dict]:
    """Collectives of the compiled forward + backward of sequence-parallel attention alone."""
    mesh = _mesh(seq, 1)
    q, k, v, m = random_qkv(jax.random.PRNGKey(0), B, t, H, 2, DK, DV)

    def fwd_bwd(q, k, v, m):
        f = lambda *a: parallel.sequence_parallel_cosine_attention(  # noqa: E731
            *a, mesh=mesh, causal=True, exchange=exchange
        ).sum()
        return jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, m)

    return collectives(jax.jit(fwd_bwd).lower(q, k, v, m).compile().as_text())


def bad_input() -> dict:
    """The ValueError messages of the wrapper's checks."""
    q, k, v, m = random_qkv(jax.random.PRNGKey(0), B, 100, H, 2, DK, DV)
    calls = {
        "indivisible": lambda: parallel.sequence_parallel_cosine_attention(q, k, v, m, mesh=_mesh(8, 1), causal=True),
        "no_axis": lambda: parallel.sequence_parallel_cosine_attention(
            q, k, v, m, mesh=_mesh(4, 2), axis="ctx", causal=True
        ),
        "no_mesh": lambda: parallel.sequence_parallel_cosine_attention(q, k, v, m, causal=True),
        "exchange": lambda: parallel.sequence_parallel_cosine_attention(
            q[:, :96], k[:, :96], v[:, :96], m, mesh=_mesh(8, 1), causal=True, exchange="ring"
        ),
    }
    messages = {}
    for name, call in calls.items():
        try:
            call()
            messages[name] = None
        except ValueError as err:
            messages[name] = str(err)
    return messages


def step_memory() -> dict:
    """Compiled per-device memory of a gpt-tiny training step at seq 4096, batch 1: one device vs a
    1 x 8 sequence-parallel mesh (what the longest trainable context follows)."""
    from cottention_jax.configs import train_preset  # noqa: PLC0415
    from cottention_jax.memory import train_step_memory  # noqa: PLC0415
    from cottention_jax.sharding import make_mesh  # noqa: PLC0415

    seq = 4096
    long = [f"model.max_len={seq}", f"data.seq_len={seq}"]  # the GPT refuses inputs past max_len
    one = train_step_memory(train_preset("gpt-tiny", long), 1, seq)
    cfg = train_preset("gpt-tiny", [*long, "sharding=data", "seq_parallel=8"])
    eight = train_step_memory(cfg, 1, seq, make_mesh("data", 8))
    return {"one": one["temporaries"], "eight": eight["temporaries"]}


def main(group: str) -> None:
    if group == "ops":
        result = {name: compare_op(*case) for name, case in OP_CASES.items()}
    elif group == "collectives":
        result = {
            f"{exchange}-seq{seq}-t{t}": attention_collectives(seq, t, exchange)
            for exchange in ("all_gather", "scan")
            for seq in (4, 8)
            for t in (2048, 8192)
        }
        result["bad_input"] = bad_input()
        result["step_memory"] = step_memory()
    else:
        raise SystemExit(f"unknown group {group!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
