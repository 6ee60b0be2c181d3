"""cottention-launch: run N processes of one command on this machine, as one JAX run.

    cottention-launch --nproc 2 -- cottention-train --config gpt_tiny --workdir runs/a
    python -m cottention_jax.launch --nproc 4 --devices-per-process 2 -- python my_script.py

Each rank gets COTTENTION_COORDINATOR=127.0.0.1:PORT (a free port picked just before
the start), COTTENTION_NUM_PROCESSES=N and COTTENTION_PROCESS_ID=i, which
`cottention_jax.distributed.config_from_env` reads. The machine's devices are split:
on GPU machines (`nvidia-smi -L`) through CUDA_VISIBLE_DEVICES, on CPU through
`--xla_force_host_platform_device_count=K` in XLA_FLAGS. This module never imports jax.

Output lines of rank i are forwarded with the prefix "[i] " (stdout to stdout, stderr
to stderr). When a rank exits non-zero, the others get SIGTERM, then SIGKILL after
10 s, and the launcher exits with that rank's status. SIGTERM and SIGINT sent to the
launcher are passed on to every rank (so a preemption notice reaches all of them) and
the launcher waits for them; a second SIGINT kills them. Exit status: 0 when every
rank succeeded, else the first failure's (128+N for a rank killed by signal N).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from cottention_jax.cli_errors import OneLineParser

__all__ = ["main", "split_devices"]

KILL_GRACE_S = 10.0
_POLL_S = 0.05
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def _say(message: str) -> None:
    """One line on stderr; os.write, so that it is safe inside a signal handler."""
    os.write(2, f"cottention-launch: {message}\n".encode())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _gpu_ids(environ) -> list[str]:
    """The GPUs this launcher may hand out: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`."""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return []
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, _ in enumerate(row for row in out.stdout.splitlines() if row.startswith("GPU "))]


def split_devices(nproc: int, per_process: int | None, environ) -> list[dict[str, str]]:
    """Per rank, the environment variables that give it its share of this machine's devices."""
    gpus = _gpu_ids(environ)
    if gpus:
        k = per_process or len(gpus) // nproc
        if k < 1 or k * nproc > len(gpus):
            raise ValueError(
                f"--nproc {nproc} x {k or 1} device(s) needs {nproc * max(k, 1)} GPUs, but {len(gpus)} are visible"
            )
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * k : (i + 1) * k])} for i in range(nproc)]
    flags = environ.get("XLA_FLAGS", "")
    asked = _DEVICE_COUNT_FLAG.findall(flags)
    total = int(asked[-1]) if asked else int(environ.get("JAX_NUM_CPU_DEVICES", "0") or 0)
    k = per_process or max(1, total // nproc)
    rest = _DEVICE_COUNT_FLAG.sub("", flags).split()
    env = {"XLA_FLAGS": " ".join(rest + [f"--xla_force_host_platform_device_count={k}"])}
    if "JAX_NUM_CPU_DEVICES" in environ:
        env["JAX_NUM_CPU_DEVICES"] = str(k)
    return [dict(env) for _ in range(nproc)]


def _find_prctl():
    try:
        import ctypes  # noqa: PLC0415

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the launcher's own waits still apply
        return None


_PRCTL = _find_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the launcher itself dies (no orphans)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _forward(stream, out, prefix: str, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        with lock:
            out.write(prefix + (line if line.endswith("\n") else line + "\n"))
            out.flush()
    stream.close()


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Ranks:
    """The running children, their output threads, and signals to all of them."""

    def __init__(self, procs: list[subprocess.Popen], threads: list[threading.Thread]):
        self.procs, self.threads = procs, threads

    def signal_all(self, signum: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signum)  # the child's own group: its helpers too
                except (ProcessLookupError, PermissionError):
                    pass

    def stop(self, grace_s: float = KILL_GRACE_S) -> None:
        """SIGTERM to the ranks still running; SIGKILL whatever is left after grace_s."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and [p.poll() for p in self.procs].count(None):
            time.sleep(_POLL_S)
        left = [i for i, p in enumerate(self.procs) if p.poll() is None]
        if left:
            _say(f"rank(s) {', '.join(map(str, left))} still running {grace_s:g}s after SIGTERM; killing")
            self.signal_all(signal.SIGKILL)

    def reap(self) -> None:
        for p in self.procs:
            p.wait()
        for t in self.threads:
            t.join(timeout=5)


def run(nproc: int, command: list[str], per_process: int | None = None, port: int = 0) -> int:
    """Start `command` as ranks 0..nproc-1 and supervise them; returns the exit status."""
    shares = split_devices(nproc, per_process, os.environ)
    coordinator = f"127.0.0.1:{port or free_port()}"
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if signum == signal.SIGINT and received.count(signal.SIGINT) > 1:
            _say("second SIGINT: killing every rank")
            ranks.signal_all(signal.SIGKILL)
        else:
            _say(f"got {signal.Signals(signum).name}; passing it to every rank")
            ranks.signal_all(signum)

    ranks = _Ranks(procs, threads)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(nproc):
            env = dict(os.environ, **shares[i])
            env.update(
                COTTENTION_COORDINATOR=coordinator, COTTENTION_NUM_PROCESSES=str(nproc), COTTENTION_PROCESS_ID=str(i)
            )
            env.setdefault("PYTHONUNBUFFERED", "1")
            try:
                procs.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        preexec_fn=_die_with_parent,
                    )
                )
            except OSError as e:
                _say(f"cannot start {command[0]!r}: {e.strerror or e}")
                ranks.stop()
                return 127
        # the output threads start only once every child is forked (preexec_fn and threads)
        for i, p in enumerate(procs):
            for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_forward, args=(stream, out, f"[{i}] ", lock), daemon=True)
                t.start()
                threads.append(t)
        failure = None
        while [p.poll() for p in procs].count(None):  # poll every rank, each time
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed and failure is None:
                failure = failed[0]
                if not received:  # after a forwarded signal, ranks finish (and save) on their own
                    _say(f"rank {failure[0]} exited with status {_status(failure[1])}; stopping the other ranks")
                    ranks.stop()
                    break
            time.sleep(_POLL_S)
        ranks.reap()
        if failure is None:
            failure = next(((i, p.returncode) for i, p in enumerate(procs) if p.returncode), None)
        return 0 if failure is None else _status(failure[1])
    finally:
        ranks.signal_all(signal.SIGKILL)  # only if something above raised: never leave orphans
        for p in procs:
            p.wait()
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineParser(
        prog="cottention-launch",
        usage="cottention-launch --nproc N [--devices-per-process K] [--port P] -- COMMAND ...",
        description="Start N local processes of COMMAND as one multi-process JAX run "
        "(JAX's coordination service on 127.0.0.1, devices split among the ranks).",
    )
    parser.add_argument("--nproc", type=int, required=True, help="number of processes (ranks)")
    parser.add_argument(
        "--devices-per-process",
        type=int,
        default=None,
        metavar="K",
        help="devices per rank (CPU: simulated host devices; GPU: GPUs). "
        "Default: the machine's devices / N (CPU: the count XLA_FLAGS "
        "asks for / N, at least 1)",
    )
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    if "--" in argv:
        cut = argv.index("--")
        options, command = argv[:cut], argv[cut + 1 :]
    else:
        options, command = argv, []
    args = parser.parse_args(options)
    if not command:
        parser.error("no command: put it after '--', e.g. -- cottention-train ...")
    if args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        parser.error(f"--devices-per-process must be >= 1, got {args.devices_per_process}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, got {args.port}")
    try:
        return run(args.nproc, command, args.devices_per_process, args.port)
    except ValueError as e:
        _say(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
