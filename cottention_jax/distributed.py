"""Multi-process runs on JAX's own distributed runtime (`jax.distributed`).

One training program runs as N processes (one or more per host). They find each
other through JAX's coordination service, which process 0 hosts at `coordinator`;
XLA's collectives (gloo on CPU, NCCL on GPU) then span the devices of all of them.

    cfg = config_from_env(DistributedConfig(...from flags/config...))
    initialize(cfg)          # first thing: before any jax.devices() or computation

`initialize` calls `jax.distributed.initialize` only when the run is multi-process:
explicitly (`num_processes > 1` with `coordinator` and `process_id`, which
`cottention-launch` sets through `COTTENTION_*` variables), or when JAX's cluster
detection applies (SLURM with `SLURM_NTASKS > 1`, Open MPI with
`OMPI_COMM_WORLD_SIZE > 1`, a multi-host Cloud TPU slice). A single process is not
touched: no coordination service, no change in behaviour.

Facts about jax 0.12 this relies on (see also shared/notes/grain-and-multihost.md):
- `jax.distributed.initialize` raises RuntimeError once a backend exists; we check
  first (`xla_bridge.backends_are_initialized`) to say what to move.
- Its preemption service (on by default) installs a C SIGTERM handler that only
  records the notice for `multihost_utils.reached_preemption_sync_point`; a Python
  `signal.signal(SIGTERM, ...)` installed afterwards replaces it.
- A dead peer (SIGKILL): a gloo collective in flight raises at once in the others
  (`ValueError: ... Gloo all-reduce failed ... Connection reset by peer`); after
  `heartbeat_timeout_s` the coordination service declares it dead ("tasks are
  unhealthy ... 1") and every other process aborts (LOG(FATAL), SIGABRT, status 134).
- At exit (atexit) each process waits at a shutdown barrier for all the others, up to
  `shutdown_timeout_s`; if one is still busy then, all abort with 134. A process that
  failed should therefore leave with `os._exit` rather than wait there.
- `initialize` that cannot reach everyone within `init_timeout_s` aborts the process
  too (no Python exception); a rank > 0 first waits for the coordinator's port here,
  so an unreachable coordinator is a one-line RuntimeError instead.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "ENV_COORDINATOR",
    "ENV_LOCAL_DEVICE_IDS",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "DistributedConfig",
    "barrier",
    "config_from_env",
    "detected_cluster",
    "initialize",
    "is_primary",
    "process_prefix",
]

ENV_COORDINATOR = "COTTENTION_COORDINATOR"
ENV_NUM_PROCESSES = "COTTENTION_NUM_PROCESSES"
ENV_PROCESS_ID = "COTTENTION_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "COTTENTION_LOCAL_DEVICE_IDS"

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d{1,5})$")
_barrier_uses: dict[str, int] = {}


@dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run; all None = single process or auto-detect.

    coordinator: "HOST:PORT" of process 0's coordination service.
    num_processes / process_id: the run's size and this process's rank (0-based).
    local_device_ids: "0,1" restricts this process to those local devices (GPU ids).
    heartbeat_timeout_s: a peer silent this long is dead; the others then abort.
    init_timeout_s: how long to wait for all processes to join.
    shutdown_timeout_s: how long a finishing process waits for the others at exit.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: str | None = None
    heartbeat_timeout_s: int = 60
    init_timeout_s: int = 120
    shutdown_timeout_s: int = 120

    def __post_init__(self):
        if self.coordinator is not None:
            m = _HOST_PORT.match(str(self.coordinator))
            if not m or not 1 <= int(m.group(2)) <= 65535:
                raise ValueError(f"distributed.coordinator must be HOST:PORT (port 1-65535), got {self.coordinator!r}")
        if self.num_processes is not None and (not _is_int(self.num_processes) or self.num_processes < 1):
            raise ValueError(f"distributed.num_processes must be an integer >= 1, got {self.num_processes!r}")
        if self.process_id is not None:
            if not _is_int(self.process_id) or self.process_id < 0:
                raise ValueError(f"distributed.process_id must be an integer >= 0, got {self.process_id!r}")
            if self.num_processes is not None and self.process_id >= self.num_processes:
                raise ValueError(
                    f"distributed.process_id must be < num_processes ({self.num_processes}), got {self.process_id}"
                )
        if self.local_device_ids is not None:
            self.local_device_id_list()
        for name in ("heartbeat_timeout_s", "init_timeout_s", "shutdown_timeout_s"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"distributed.{name} must be an integer >= 1 (seconds), got {value!r}")

    def local_device_id_list(self) -> list[int] | None:
        """`local_device_ids` as a list of ints (None when unset)."""
        if self.local_device_ids is None:
            return None
        parts = [p.strip() for p in str(self.local_device_ids).split(",")]
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError(
                f"distributed.local_device_ids must be comma-separated device ids "
                f"like '0,1', got {self.local_device_ids!r}"
            )
        return [int(p) for p in parts]

    @property
    def explicit(self) -> bool:
        """All three of coordinator, num_processes and process_id are given."""
        return None not in (self.coordinator, self.num_processes, self.process_id)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def config_from_env(base: DistributedConfig | None = None, environ=None) -> DistributedConfig:
    """`base` with its unset fields (None) filled from the environment; `base` wins where set.

    COTTENTION_COORDINATOR, COTTENTION_NUM_PROCESSES, COTTENTION_PROCESS_ID,
    COTTENTION_LOCAL_DEVICE_IDS; JAX's JAX_COORDINATOR_ADDRESS stands in for the
    coordinator when the run is multi-process anyway (num_processes or a cluster). A
    malformed value is a ValueError naming the variable.
    """
    base = base or DistributedConfig()
    env = os.environ if environ is None else environ
    updates: dict[str, Any] = {}
    for field, var in (("num_processes", ENV_NUM_PROCESSES), ("process_id", ENV_PROCESS_ID)):
        raw = env.get(var)
        if getattr(base, field) is None and raw not in (None, ""):
            try:
                updates[field] = int(raw)
            except ValueError:
                raise ValueError(f"{var} must be an integer, got {raw!r}") from None
    if base.coordinator is None:
        coordinator = env.get(ENV_COORDINATOR)
        multi = updates.get("num_processes", base.num_processes) or detected_cluster(env)
        if not coordinator and multi:  # JAX's own variable, alone, does not make a run multi-process
            coordinator = env.get("JAX_COORDINATOR_ADDRESS")
        if coordinator:
            updates["coordinator"] = coordinator.strip()
    if base.local_device_ids is None and env.get(ENV_LOCAL_DEVICE_IDS):
        updates["local_device_ids"] = env[ENV_LOCAL_DEVICE_IDS]
    try:
        return replace(base, **updates)
    except ValueError as e:
        raise ValueError(f"{e} (from the environment: {', '.join(sorted(k for k in updates))})") from None


def detected_cluster(environ=None) -> str | None:
    """The multi-process cluster JAX would detect here ("SLURM", "Open MPI", "Cloud TPU"), or None.

    Only a cluster with more than one process counts: a one-task SLURM job is a
    single process and stays uninitialized.
    """
    env = os.environ if environ is None else environ
    if _int_env(env, "SLURM_NTASKS") > 1 and "SLURM_PROCID" in env and "SLURM_JOB_ID" in env:
        return "SLURM"
    if _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1 and "OMPI_COMM_WORLD_RANK" in env:
        return "Open MPI"
    if _multi_host_tpu(env):
        return "Cloud TPU"
    return None


def _int_env(env, name: str) -> int:
    try:
        return int(env.get(name, "0"))
    except ValueError:
        return 0


def _multi_host_tpu(env) -> bool:
    """A Cloud TPU VM that is one of several workers (GKE variables, or multislice)."""
    if _int_env(env, "MEGASCALE_NUM_SLICES") > 1:
        return True
    for var in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        if len([h for h in env.get(var, "").split(",") if h.strip()]) > 1:
            return True
    if env is os.environ and "TPU_SKIP_MDS_QUERY" not in env:
        try:  # a GCE TPU VM: ask JAX's own detection (metadata server) how many workers
            from jax._src.clusters import cloud_tpu_cluster as tpu  # noqa: PLC0415

            if tpu.running_in_cloud_tpu_vm and tpu.GceTpuCluster.is_env_present():
                return len(tpu.GceTpuCluster._get_worker_list_in_slice()) > 1
        except Exception:  # noqa: BLE001 - no TPU metadata: not a TPU cluster
            return False
    return False


def initialize(cfg: DistributedConfig | None = None) -> bool:
    """Join the multi-process run if this is one; True if initialized, False for one process.

    Call it first, before anything touches a JAX backend (jax.devices(), a jitted
    call, device_put): otherwise RuntimeError. Idempotent: a second call returns True.
    """
    import jax  # noqa: PLC0415
    from jax._src import xla_bridge  # noqa: PLC0415

    cfg = cfg or DistributedConfig()
    if _distributed_initialized():
        return True
    cluster = detected_cluster()
    if cfg.num_processes == 1 or (cfg.num_processes is None and cluster is None):
        given = [f for f in ("coordinator", "process_id") if getattr(cfg, f) is not None]
        if given and cfg.num_processes is None:
            raise ValueError(
                f"distributed.{given[0]} is set but num_processes is not "
                "(and no SLURM/Open MPI/TPU cluster was detected)"
            )
        return False
    if cfg.num_processes is not None and cluster is None and not cfg.explicit:
        missing = [f for f in ("coordinator", "process_id") if getattr(cfg, f) is None]
        raise ValueError(
            f"distributed: num_processes={cfg.num_processes} needs "
            f"{' and '.join(missing)} as well (or run under SLURM/Open MPI)"
        )
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "distributed.initialize() must run before any JAX call that starts a "
            "backend (jax.devices(), a computation, device_put); call it first"
        )
    if hasattr(jax.config, "jax_cpu_collectives_implementation"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = dict(
        coordinator_address=cfg.coordinator,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        local_device_ids=cfg.local_device_id_list(),
        initialization_timeout=cfg.init_timeout_s,
        heartbeat_timeout_seconds=cfg.heartbeat_timeout_s,
        shutdown_timeout_seconds=cfg.shutdown_timeout_s,
    )
    if cfg.explicit:
        kwargs["cluster_detection_method"] = "deactivate"
    accepted = inspect.signature(jax.distributed.initialize).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    where = cfg.coordinator or f"the {cluster} coordinator"
    if cfg.explicit and cfg.process_id != 0 and "initialization_timeout" in kwargs:
        # jax aborts the process (SIGABRT) when it cannot connect; say it in one line instead
        assert cfg.coordinator is not None and cfg.process_id is not None  # cfg.explicit: all three are given
        waited = _wait_for_coordinator(cfg.coordinator, cfg.init_timeout_s, cfg.process_id)
        kwargs["initialization_timeout"] = max(1, int(cfg.init_timeout_s - waited))
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised as one line naming what failed
        who = "" if cfg.process_id is None else f" as process {cfg.process_id}"
        of = "" if cfg.num_processes is None else f" of {cfg.num_processes}"
        raise RuntimeError(
            f"could not join the distributed run at {where}{who}{of} within {cfg.init_timeout_s}s: {_first_line(e)}"
        ) from e
    return True


def _wait_for_coordinator(address: str, timeout_s: float, process_id: int) -> float:
    """Wait until process 0's coordination service accepts connections; seconds waited."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    start = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return time.monotonic() - start
        except OSError as e:
            if time.monotonic() - start >= timeout_s:
                raise RuntimeError(
                    f"process {process_id}: the coordinator {address} (process 0) did "
                    f"not answer within {timeout_s:g}s ({e.strerror or e}); is process "
                    "0 running, and is the address reachable from here?"
                ) from None
            time.sleep(0.25)


def _distributed_initialized() -> bool:
    import jax  # noqa: PLC0415

    if hasattr(jax.distributed, "is_initialized"):
        return jax.distributed.is_initialized()
    from jax._src import distributed as _d  # noqa: PLC0415

    return _d.global_state.client is not None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _rank_and_count() -> tuple[int, int]:
    """(process index, process count), from the coordination state when initialized.

    Reading it there does not start a backend: in a multi-process run the first backend
    use is itself collective (every process must reach it), so error paths must not.
    """
    if _distributed_initialized():
        from jax._src import distributed as _d  # noqa: PLC0415

        return _d.global_state.process_id, _d.global_state.num_processes
    import jax  # noqa: PLC0415

    return jax.process_index(), jax.process_count()


def is_primary() -> bool:
    """This is process 0 (the one that logs, writes metrics and holds the workdir lock)."""
    return _rank_and_count()[0] == 0


def process_prefix() -> str:
    """ "[rank I] " for messages of a multi-process run, "" for a single process."""
    rank, count = _rank_and_count()
    return "" if count == 1 else f"[rank {rank}] "


def barrier(name: str, timeout_s: float) -> None:
    """Wait until every process reaches `barrier(name, ...)`; no-op for a single process.

    Uses the coordination service (not a device collective), so it has a timeout:
    RuntimeError naming the barrier if the others do not arrive within `timeout_s`.
    Every process must call the same barriers in the same order; a name may be used
    again (each use gets its own id).
    """
    if not _distributed_initialized():
        return
    from jax._src import distributed as _d  # noqa: PLC0415

    state = _d.global_state
    if (state.num_processes or 1) <= 1:
        return
    assert state.client is not None  # initialized: the coordination client exists
    uses = _barrier_uses.get(name, 0) + 1
    _barrier_uses[name] = uses
    try:
        state.client.wait_at_barrier(f"cottention:{name}:{uses}", max(1, int(timeout_s * 1000)))
    except Exception as e:  # noqa: BLE001 - XLA raises its own status errors
        missing = _missing_tasks(str(e))
        what = (
            f"timed out after {timeout_s:g}s waiting for process(es) {missing}"
            if missing
            else f"failed: {_first_line(e)}"
        )
        raise RuntimeError(f"{process_prefix()}barrier {name!r} {what}") from e


def _missing_tasks(message: str) -> str:
    """The task ids a coordination-service barrier error lists as not arrived ("1, 3"), or ""."""
    m = re.search(r"timed out task names:\s*\n((?:[^\n]+\n?)+)", message)
    if not m:
        return ""
    ids = [re.search(r"(\d+)\s*$", line) for line in m.group(1).splitlines()]  # "1" or ".../task:1"
    return ", ".join(i.group(1) for i in ids if i)
