"""One rank of a small multi-process JAX program, started by tests/test_distributed.py.

Run as `python -m cottention_jax.launch --nproc 2 -- python -m tests._distributed_worker`.
What it does is chosen by DIST_WORKER_MODE:
  sum      (default) join the run, build a global array from per-process rows, print
           `RESULT {json}` with the process/device counts and a jitted sum
  fail     join; rank DIST_WORKER_FAIL_RANK exits 3 at once (os._exit: no shutdown
           barrier), the others sleep 60 s (JAX's preemption service then ignores
           SIGTERM, so the launcher has to escalate to SIGKILL)
  sigterm  join, install a SIGTERM handler (prints "got SIGTERM", exits 143), print
           "ready", sleep 60 s
  barrier  join; every rank but 0 sleeps DIST_WORKER_SLEEP_S, rank 0 waits at a
           barrier with a 2 s timeout and prints the error (or "barrier passed")
  single   no COTTENTION_* set: print what initialize returned
Timeouts are short so that a broken run fails in seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from cottention_jax import distributed

MODE = os.environ.get("DIST_WORKER_MODE", "sum")
ROWS_PER_PROCESS, COLS = 2, 3


def _join() -> bool:
    heartbeat = int(os.environ.get("DIST_WORKER_HEARTBEAT_S", "10"))
    cfg = distributed.config_from_env(
        distributed.DistributedConfig(heartbeat_timeout_s=heartbeat, init_timeout_s=30, shutdown_timeout_s=10)
    )
    return distributed.initialize(cfg)


def _sum() -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    initialized = _join()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    n, i = jax.process_count(), jax.process_index()
    rows = np.arange(n * ROWS_PER_PROCESS * COLS, dtype=np.float32).reshape(-1, COLS)
    mine = rows[i * ROWS_PER_PROCESS : (i + 1) * ROWS_PER_PROCESS]
    global_x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), mine, rows.shape)
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(global_x)
    print(
        "RESULT "
        + json.dumps(
            {
                "initialized": initialized,
                "process_index": i,
                "process_count": n,
                "local_devices": jax.local_device_count(),
                "global_devices": jax.device_count(),
                "sum": float(total),
                "expected": float(rows.sum()),
                "primary": distributed.is_primary(),
                "prefix": distributed.process_prefix(),
            }
        ),
        flush=True,
    )
    distributed.barrier("done", 30)


def _sigterm() -> None:
    _join()

    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    time.sleep(60)


def main() -> None:
    rank = int(os.environ.get(distributed.ENV_PROCESS_ID, "0"))
    if MODE == "sum":
        _sum()
    elif MODE == "fail":
        _join()
        print(f"pid {os.getpid()}", flush=True)
        if rank == int(os.environ.get("DIST_WORKER_FAIL_RANK", "1")):
            print("failing now", flush=True)
            os._exit(3)
        time.sleep(60)
    elif MODE == "sigterm":
        _sigterm()
    elif MODE == "barrier":
        _join()
        if rank != 0:
            time.sleep(float(os.environ.get("DIST_WORKER_SLEEP_S", "5")))
            return
        try:
            distributed.barrier("slow", 2)
            print("barrier passed", flush=True)
        except RuntimeError as e:
            print(f"ERROR {e}", flush=True)
    elif MODE == "single":
        print(f"RESULT {json.dumps({'initialized': _join()})}", flush=True)
    else:
        raise SystemExit(f"unknown DIST_WORKER_MODE {MODE!r}")


if __name__ == "__main__":
    main()
