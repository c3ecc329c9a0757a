"""Write a model folder all at once or not at all.

Files go into a hidden sibling folder, are flushed to the disk (``durable``: F_FULLFSYNC on macOS), and the
folder is renamed onto OUTPUT at the end: a failed, interrupted or killed run never leaves a half-written
OUTPUT, and never harms an existing one. A run killed with SIGKILL cannot clean up: the next run into the
same OUTPUT removes its hidden folders (and puts a replaced OUTPUT back, if the kill fell between the two
renames of ``--force``).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlx_embedgemma.durable import process_alive, sync_path

PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"
# Below this, a write error without errno (MLX reports none) is taken for a full disk.
NEARLY_FULL = 16 << 20


class OutputExistsError(FileExistsError):
    pass


class OutputWriteError(OSError):
    """Writing OUTPUT failed (disk full, no permission, I/O error); nothing of it was left behind."""


def check_target(out: Path, force: bool) -> None:
    """Refuse early, before any work, if OUTPUT cannot be written."""
    _recover_interrupted(out)
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
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARK}{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise _write_error(out, e, existed) from e
    try:
        yield tmp
        for f in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
            sync_path(f)
        sync_path(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD_MARK}{os.getpid()}-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        sync_path(out.parent)
    except OSError as e:
        error = _write_error(out, e, existed)
        shutil.rmtree(tmp, ignore_errors=True)
        raise error from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_error(out: Path, e: OSError, existed: bool) -> OutputWriteError:
    free = shutil.disk_usage(_existing_parent(out)).free  # before cleanup frees the partial files
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and free < NEARLY_FULL):
        hint = f"the disk is full ({free / 1e6:.1f} MB free): free some space or choose an OUTPUT on another disk"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "its folder is not writable: choose an OUTPUT in a writable folder"
    else:
        hint = "check the disk and try again, or choose another OUTPUT"
    kept = f"; the existing {out} is unchanged" if existed else ""
    error = OutputWriteError(f"could not write {out} ({e.strerror or e}): {hint}. Nothing was written{kept}")
    error.errno = e.errno
    return error


def _existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def _recover_interrupted(out: Path) -> None:
    """Clean up after runs killed with SIGKILL (nothing else skips the cleanup); never touch live runs' folders."""
    for mark in (OLD_MARK, PARTIAL_MARK):
        for folder in out.parent.glob(f".{out.name}{mark}*"):
            pid = folder.name.removeprefix(f".{out.name}{mark}").split("-")[0]
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            replaced = folder / out.name
            if mark == OLD_MARK and replaced.is_dir() and not out.exists():
                os.replace(replaced, out)  # killed between the two renames: the previous OUTPUT returns
            shutil.rmtree(folder, ignore_errors=True)


