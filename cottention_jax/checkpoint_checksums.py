"""SHA-256 manifests of checkpoint directories: written after a save completes, checked before a restore.

`<step>/SHA256SUMS` lists every other file of the step directory, one
`<sha256>  <path relative to the step>` line each (the format of `sha256sum`, so
`cd <step> && sha256sum -c SHA256SUMS` checks a checkpoint by hand). It is written
to a temporary name, flushed to disk and renamed, so a manifest is whole or absent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["MANIFEST", "find_damage", "read_manifest", "write_manifest"]

MANIFEST = "SHA256SUMS"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    """Every file under `directory` but the manifest, as sorted POSIX paths relative to it."""
    names = []
    for root, _, files in os.walk(directory):
        for name in files:
            rel = (Path(root) / name).relative_to(directory).as_posix()
            if not rel.startswith(MANIFEST):
                names.append(rel)
    return sorted(names)


def write_manifest(directory: str | os.PathLike) -> Path:
    """Checksum every file of `directory` into `<directory>/SHA256SUMS` (atomically); returns its path."""
    directory = Path(directory)
    lines = "".join(f"{_sha256(directory / rel)}  {rel}\n" for rel in _files(directory))
    partial, final = directory / f"{MANIFEST}.partial", directory / MANIFEST
    with open(partial, "w", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def read_manifest(directory: str | os.PathLike) -> dict[str, str] | None:
    """{relative path: sha256} of `<directory>/SHA256SUMS`, or None when there is none.

    Raises ValueError for a manifest that is not in the format `write_manifest` writes.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise ValueError(f"{path} line {number} is not '<sha256>  <path>'")
        sums[rel] = digest
    return sums


def find_damage(directory: str | os.PathLike) -> str | None:
    """What differs from the manifest (the first missing or altered file), or None when every listed
    file matches. A directory without a manifest has nothing to compare: None."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} is missing"
    try:
        sums = read_manifest(directory)
    except (ValueError, UnicodeDecodeError) as err:
        return f"its {MANIFEST} is unreadable ({err})"
    if sums is None:
        return None
    for rel, digest in sums.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        if _sha256(path) != digest:
            return f"{rel} differs from its SHA-256 in {MANIFEST}: truncated or altered"
    return None
