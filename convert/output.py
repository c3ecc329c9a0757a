"""Write a model folder all at once or not at all.

Files go into a hidden sibling folder, are fsynced, and the folder is renamed onto OUTPUT at the end:
a failed, interrupted or killed run never leaves a half-written OUTPUT, and never harms an existing one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_MARK = ".partial-"


class OutputExistsError(FileExistsError):
    pass


def check_target(out: Path, force: bool) -> None:
    """Refuse early, before any work, if OUTPUT cannot be written."""
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it (it is kept until the new one is complete)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another OUTPUT")
    parent = _existing_parent(out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {parent}: choose an OUTPUT in a writable folder")


@contextmanager
def atomic_folder(out: Path, force: bool) -> Iterator[Path]:
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARK}{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        for f in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
            _fsync(f)
        _fsync(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def _remove_stale_partials(out: Path) -> None:
    """Delete leftovers of runs killed with SIGKILL (nothing else skips the cleanup), not live ones."""
    for partial in out.parent.glob(f".{out.name}{PARTIAL_MARK}*"):
        pid = partial.name.removeprefix(f".{out.name}{PARTIAL_MARK}").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
