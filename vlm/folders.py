"""The one atomic-folder writer: releases, exports and checkpoints are written into a hidden staging folder
beside their destination and renamed into place, so a kill never leaves a half-written folder and an earlier
one stays whole until the new one is complete. `atomic_file` does the same for one file (a feature cache's).
Contents are fsynced before the rename and the parent folder after it: otherwise a power loss could keep the
rename but lose the data it names."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def staging_folder(folder: str | Path) -> Path:
    """Where `folder` is written before it is renamed into place (emptied of any earlier attempt, not created)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def fsync_tree(path: str | Path) -> None:
    """Flush every file and folder under `path` (and `path` itself) to disk, deepest first."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder too: fsyncing it makes its entries (a rename) durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_folder(tmp: Path, folder: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write `extra_files` (name -> text) into `tmp`, then rename it to `folder`, replacing what was there."""
    folder = Path(folder)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    fsync_tree(tmp)
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():  # moved aside, not deleted first: the folder is missing only between two renames
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """`with atomic_folder(out) as tmp:` write into tmp; on success it becomes `out`, on an error it is removed."""
    tmp = staging_folder(folder)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_folder(tmp, folder)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """`with atomic_file(path) as tmp:` write the file tmp; on success it becomes `path`, on an error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)
