"""Where data lives, and the errors raised when a data file is missing or corrupt.

Two roots:

- the package's `shipped/` folder (`SHIPPED_DATA_DIR`, found with `importlib.resources`, so
  it is the same in a checkout and in an installed wheel): what ships with the code, the
  embedded Shakespeare corpus and the default tokenizers;
- a writable data dir (`default_data_dir()`): `$COTTENTION_DATA_DIR`, else
  `~/.cache/cottention_jax`. Everything built on a machine goes there:

      <data_dir>/corpora/<name>/<name>.jsonl.gz   corpora built by experiments/build_corpus.py
      <data_dir>/tasks/<task>/<task>.jsonl.gz     labelled tasks built by experiments/build_tasks.py
      <data_dir>/tokenizers/<corpus>-<kind>-<vocab>.json

TFDS datasets are not here: they are read, never downloaded, from `$TFDS_DATA_DIR`, else
`~/tensorflow_datasets` (`tfds_catalog.py`).

Records (documents, labelled examples) are stored as gzipped JSON Lines written
byte-reproducibly (`write_jsonl_gz`). Every file that matters is listed with its SHA-256 in a `SHA256SUMS` file beside
it (the format of `sha256sum`), so a truncated or altered file is caught on load
and reported with the command that rebuilds it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CHECKSUM_FILE",
    "CorruptDataError",
    "MissingDataError",
    "SHIPPED_DATA_DIR",
    "default_data_dir",
    "read_checksums",
    "read_jsonl_gz",
    "resolve_data_dir",
    "sha256_file",
    "shipped_rebuild_command",
    "verify_checksums",
    "write_checksums",
    "write_jsonl_gz",
]

# The files that ship inside the package (package data of the wheel; one copy in the repository).
# pip unpacks a wheel, so the resource is a real folder; its Path is what the readers below take.
SHIPPED_DATA_DIR = Path(str(importlib.resources.files(__package__) / "shipped"))
_CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding cottention_jax/
CHECKSUM_FILE = "SHA256SUMS"
_ENV_VAR = "COTTENTION_DATA_DIR"


class MissingDataError(FileNotFoundError):
    """A data file is absent; the message names the file and the command that builds it."""


class CorruptDataError(ValueError):
    """A data file is unreadable, fails its checksum or is out of date; the message says how
    to rebuild it."""


def missing(path, rebuild: str) -> MissingDataError:
    return MissingDataError(f"data file {path} does not exist. Build it with:\n    {rebuild}")


def corrupt(path, detail: str, rebuild: str) -> CorruptDataError:
    return CorruptDataError(f"data file {path} is corrupt ({detail}). Rebuild it with:\n    {rebuild}")


def stale(path, detail: str, rebuild: str) -> CorruptDataError:
    return CorruptDataError(f"data at {path} is out of date ({detail}). Rebuild it with:\n    {rebuild}")


def shipped_rebuild_command(subdir: str) -> str:
    """How to restore a shipped folder (e.g. "tokenizers"): from git in a checkout of the
    repository, else by reinstalling the package the files came with."""
    if (_CHECKOUT / ".git").exists():
        return (
            f"git checkout -- cottention_jax/data/shipped/{subdir}   "
            "(or: python experiments/build_corpus.py --embedded)"
        )
    return "pip install --force-reinstall --no-deps cottention-jax   (the file ships in the package)"


def default_data_dir() -> Path:
    """`$COTTENTION_DATA_DIR` if set, else `~/.cache/cottention_jax`."""
    env = os.environ.get(_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cottention_jax"


def resolve_data_dir(data_dir=None) -> Path:
    """`data_dir` as a Path, or the default when None."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory, names) -> Path:
    """Write `<directory>/SHA256SUMS` listing the SHA-256 of each file in `names`."""
    directory = Path(directory)
    lines = [f"{sha256_file(directory / name)}  {name}\n" for name in sorted(names)]
    out = directory / CHECKSUM_FILE
    out.write_text("".join(lines), encoding="utf-8")
    return out


def read_checksums(directory, rebuild: str) -> dict[str, str]:
    """{file name: sha256} from `<directory>/SHA256SUMS`; raises if it is absent or malformed."""
    path = Path(directory) / CHECKSUM_FILE
    if not path.is_file():
        raise missing(path, rebuild)
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise corrupt(path, f"line {number} is not '<sha256>  <name>'", rebuild)
        sums[parts[1]] = parts[0]
    if not sums:
        raise corrupt(path, "it lists no file", rebuild)
    return sums


def verify_checksums(directory, rebuild: str, names=None) -> None:
    """Check every file listed in `<directory>/SHA256SUMS` (or only `names`) against its hash.

    Raises MissingDataError when a listed file is absent and CorruptDataError when
    its bytes differ, both with `rebuild` (a shell command) in the message.
    """
    directory = Path(directory)
    sums = read_checksums(directory, rebuild)
    for name in sorted(sums) if names is None else names:
        path = directory / name
        if name not in sums:
            raise corrupt(directory / CHECKSUM_FILE, f"no checksum for {name}", rebuild)
        if not path.is_file():
            raise missing(path, rebuild)
        if sha256_file(path) != sums[name]:
            raise corrupt(path, "SHA-256 differs from SHA256SUMS: truncated or altered", rebuild)


def write_jsonl_gz(path, records: Iterable[dict]) -> Path:
    """Write dicts as gzipped JSON Lines; the same records always give the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    # mtime=0 and no file name in the gzip header make the output reproducible.
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    os.replace(tmp, path)
    return path


def read_jsonl_gz(path, rebuild: str) -> list[dict]:
    """The dicts of a gzipped JSON Lines file; MissingDataError / CorruptDataError naming `rebuild`."""
    path = Path(path)
    if not path.is_file():
        raise missing(path, rebuild)
    records = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"line {number} is not a JSON object")
                records.append(record)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise corrupt(path, f"{type(err).__name__}: {err}", rebuild) from err
    if not records:
        raise corrupt(path, "it holds no record", rebuild)
    return records
