"""Prepared data in the data dir: one folder per fingerprint, written once, atomically, under a lock.

    <data_dir>/prepared/<kind>-<fingerprint[:16]>/     complete: holds meta.json (written last)
    <data_dir>/prepared/<kind>-<fingerprint[:16]>.lock an flock(2) file: who is preparing it

`prepared_folder(data_dir, kind, fingerprint, build)` returns the folder, building it first
when it is absent: `build(tmp)` fills a temporary folder beside it, which is renamed into place
when `build` returns (a rename is atomic on one file system). Two processes that prepare the
same data at once do not collide: the lock makes the second wait, and it then finds the
folder complete and reuses it. A build that raises (or a killed process) leaves no folder that
looks complete: the temporary one is removed, or swept by the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cottention_jax.data import paths

__all__ = ["META_FILE", "find_prepared", "prepared_folder", "read_meta", "write_meta"]

META_FILE = "meta.json"


def read_meta(folder: Path) -> dict:
    """meta.json of a complete prepared folder."""
    return json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))


def write_meta(folder: Path, meta: dict) -> None:
    """Write meta.json: the last file of a build, so its presence marks the folder complete."""
    (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another process prepares the same data
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _folder(data_dir, kind: str, fingerprint: str) -> Path:
    return paths.resolve_data_dir(data_dir) / "prepared" / f"{kind}-{fingerprint[:16]}"


def find_prepared(data_dir, kind: str, fingerprint: str) -> Path | None:
    """The complete folder of (kind, fingerprint), or None when it has not been prepared."""
    folder = _folder(data_dir, kind, fingerprint)
    return folder if (folder / META_FILE).is_file() else None


def prepared_folder(data_dir, kind: str, fingerprint: str, build: Callable[[Path], None]) -> Path:
    """The complete folder of (kind, fingerprint) under `<data_dir>/prepared/`, built when absent."""
    folder = _folder(data_dir, kind, fingerprint)
    root = folder.parent
    if (folder / META_FILE).is_file():
        return folder
    with _locked(root / f"{folder.name}.lock"):
        if (folder / META_FILE).is_file():  # another process built it while this one waited
            return folder
        for stale in root.glob(f"{folder.name}.tmp*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():  # incomplete (no meta.json): build it again
            shutil.rmtree(folder)
        tmp = root / f"{folder.name}.tmp{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            if not (tmp / META_FILE).is_file():
                raise RuntimeError(f"the build of {folder} wrote no {META_FILE}")
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
