"""Tuned launch parameters of the kernels, by device, dtype and padded head dim: a JSON table.

The table that ships with the package (`tuned_block_sizes.json`, beside this
file) holds the configurations measured on GPUs (and reasoned TPU rows, below).
`experiments/tune_kernels.py` measures a GPU or TPU of your own and writes a table
in the same format; the kernels read, in this order (the first table with a matching entry wins):

  1. the file named by $COTTENTION_KERNEL_TABLE, if set;
  2. the user table, `$XDG_CACHE_HOME/cottention_jax/tuned_block_sizes.json`
     (`~/.cache/...` without XDG_CACHE_HOME), where the tuner writes by default;
  3. the shipped table.

Format (version 1):

  {"format": "cottention-jax kernel table", "version": 1,
   "entries": [{"device": "NVIDIA H100", "compute_capability": "9.0",
                "dtype": "bfloat16", "head_dim": 128, "chunk": 64,
                "forward": {"block": 32, "num_warps": 4, "num_stages": 3},
                "dq": {...}, "dk": {...}, "dv": {...},
                "source": "how the numbers were obtained"}, ...]}

`head_dim` is the padded head dim the kernels see (a power of two >= 16, the
larger of d_k and d_v).

Entries for the TPU kernels (`pallas_tpu.py`) say `"backend": "tpu"` and carry
their own fields: `"chunk"`, `"block_k"` and `"block_v"` (multiples of 128;
see `pallas_tpu.TpuBlockSizes`) instead of the four GPU launches; their
`head_dim` is the head dim padded to a multiple of 128. An entry without
`"backend"` is a GPU entry. The lookup below is the same for both.

An entry matches a device when its `device` equals the device kind or is a
substring of it (the shipped "NVIDIA H100" rows, measured on an "NVIDIA H100
80GB HBM3", match every H100 variant; "TPU v5" serves "TPU v5 lite" unless a
"TPU v5 lite" row exists); failing that,
an entry measured on a device of the same compute capability is used (same SM
architecture, e.g. an H200 takes the H100's rows), but only when no table has a
row for the device itself. float16 takes a bfloat16 entry when it has none of
its own (the same 2-byte tensor-core dots).

$COTTENTION_KERNEL_TABLE naming a missing file, or a file that is not a table,
is a ValueError naming the variable and the path (never silently skipped).
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "FORMAT",
    "KERNELS",
    "TPU_FIELDS",
    "VERSION",
    "find_entry",
    "load_table",
    "merge_entries",
    "shipped_table_path",
    "table_paths",
    "user_table_path",
    "validate_entry",
    "write_table",
]

ENV_VAR = "COTTENTION_KERNEL_TABLE"
FORMAT, VERSION = "cottention-jax kernel table", 1
KERNELS = ("forward", "dq", "dk", "dv")
_LAUNCH_KEYS = ("block", "num_warps", "num_stages")
TPU_FIELDS = ("chunk", "block_k", "block_v")  # a TPU entry's launch (`"backend": "tpu"`)


def shipped_table_path() -> Path:
    return Path(str(resources.files("pallas_kernels.cosine_attn") / "tuned_block_sizes.json"))


def user_table_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "cottention_jax" / "tuned_block_sizes.json"


def _env_table() -> Path | None:
    """The file named by $COTTENTION_KERNEL_TABLE; ValueError if it names no file."""
    value = os.environ.get(ENV_VAR)
    if not value:
        return None
    if not Path(value).is_file():
        raise ValueError(
            f"{ENV_VAR}={value}: no such file; point it at a table written by experiments/tune_kernels.py, or unset it"
        )
    return Path(value)


def table_paths() -> list[Path]:
    """The tables the kernels consult, highest priority first: $COTTENTION_KERNEL_TABLE (which must
    exist), then the user and the shipped tables where they exist."""
    env = _env_table()
    return ([env] if env else []) + [p for p in (user_table_path(), shipped_table_path()) if p.is_file()]


def validate_entry(entry: dict, where: str = "entry") -> dict:
    """Raise ValueError unless `entry` has every field of the format with sensible values."""
    if entry.get("backend", "gpu") not in ("gpu", "tpu"):
        raise ValueError(f"{where}: backend must be 'gpu' or 'tpu'; got {entry['backend']!r}")
    if entry.get("backend") == "tpu":
        return _validate_tpu_entry(entry, where)
    for key in ("device", "dtype", "head_dim", "chunk", *KERNELS):
        if key not in entry:
            raise ValueError(f"{where}: missing field {key!r} (fields: {sorted(entry)})")
    for kernel in KERNELS:
        launch = entry[kernel]
        if not isinstance(launch, dict) or sorted(launch) != sorted(_LAUNCH_KEYS):
            raise ValueError(f"{where}: {kernel!r} must be an object with {_LAUNCH_KEYS}; got {launch!r}")
        if not all(isinstance(launch[k], int) and launch[k] >= 1 for k in _LAUNCH_KEYS):
            raise ValueError(f"{where}: {kernel!r} values must be positive integers; got {launch!r}")
    if not (isinstance(entry["head_dim"], int) and isinstance(entry["chunk"], int)):
        raise ValueError(f"{where}: head_dim and chunk must be integers; got {entry['head_dim']!r}, {entry['chunk']!r}")
    return entry


def _validate_tpu_entry(entry: dict, where: str) -> dict:
    for key in ("device", "dtype", "head_dim", *TPU_FIELDS):
        if key not in entry:
            raise ValueError(f"{where}: missing field {key!r} (fields: {sorted(entry)})")
    values = {k: entry[k] for k in ("head_dim", *TPU_FIELDS)}
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in values.values()):
        raise ValueError(f"{where}: head_dim, chunk, block_k and block_v must be positive integers; got {values}")
    return entry


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> tuple[dict, ...]:
    del mtime  # part of the cache key: an edited file is read again
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        got = (data.get("format"), data.get("version")) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a {FORMAT!r} version {VERSION} file (format, version: {got!r})")
    return tuple(validate_entry(e, f"{path} entry {i}") for i, e in enumerate(data.get("entries", [])))


def load_table(path: str | Path) -> list[dict]:
    """The entries of one table file (validated; cached until the file changes)."""
    path = Path(path)
    return list(_load(str(path), path.stat().st_mtime))


def _matches(entry: dict, dtype: str, head_dim: int, backend: str) -> bool:
    return entry.get("backend", "gpu") == backend and entry["dtype"] == dtype and entry["head_dim"] == head_dim


def find_entry(
    device_kind: str,
    compute_capability: str | None,
    dtype: str,
    head_dim: int,
    paths: list[Path] | None = None,
    backend: str = "gpu",
) -> dict | None:
    """The best entry of `backend` ("gpu" or "tpu") for a device, dtype name and padded head dim, or None.

    Preference: a table earlier in `paths` (default `table_paths()`), then the
    device (exact kind, then substring), then the same compute capability;
    float16 falls back to bfloat16 entries.
    """
    tables = [_load_named(p) for p in (table_paths() if paths is None else paths)]
    dtypes = [dtype, "bfloat16"] if dtype == "float16" else [dtype]

    def by_name(e):  # exact kind first, then a substring ("NVIDIA H100" serves "NVIDIA H100 PCIe")
        return 2 if e["device"] == device_kind else 1 if e["device"] in device_kind else 0

    def by_architecture(e):
        return compute_capability is not None and e.get("compute_capability") == str(compute_capability)

    for wanted in dtypes:
        # 1. a row for this device, in table order; 2. only then one of the same compute capability
        for entries in tables:
            named = sorted(
                (e for e in entries if _matches(e, wanted, head_dim, backend) and by_name(e)), key=by_name, reverse=True
            )
            if named:
                return named[0]
        for entries in tables:
            same_sm = [e for e in entries if _matches(e, wanted, head_dim, backend) and by_architecture(e)]
            if same_sm:
                return same_sm[0]
    return None


def _load_named(path: Path) -> list[dict]:
    """load_table, with a table that $COTTENTION_KERNEL_TABLE names said so in its error."""
    try:
        return load_table(path)
    except ValueError as err:
        if os.environ.get(ENV_VAR) and Path(os.environ[ENV_VAR]) == Path(path):
            raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]}: {err}") from None
        raise


def merge_entries(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` with every entry of `new` replacing the one of the same (backend, device, dtype, head_dim)."""
    key = lambda e: (e.get("backend", "gpu"), e["device"], e["dtype"], e["head_dim"])  # noqa: E731
    replaced = {key(e) for e in new}
    return [e for e in old if key(e) not in replaced] + list(new)


def write_table(path: str | Path, entries: list[dict]) -> Path:
    """Write (atomically) a table file holding `entries`, sorted by device, dtype and head dim."""
    path = Path(path)
    for i, e in enumerate(entries):
        validate_entry(e, f"entry {i}")
    rows = sorted(entries, key=lambda e: (e.get("backend", "gpu"), e["device"], e["dtype"], e["head_dim"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "entries": rows}, indent=1) + "\n")
    os.replace(tmp, path)
    return path
