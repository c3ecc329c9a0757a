"""Writes that reach the disk, and whether the process that started one still runs: the right call per platform.

Used by the converter's output folder and by `embed`'s output files (see embed_stream.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# Windows: OpenProcess access right, GetLastError code and GetExitCodeProcess value (winnt.h, winerror.h).
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
ERROR_ACCESS_DENIED = 5
STILL_ACTIVE = 259


def flush_to_disk(fd: int) -> None:
    """Put what was written to ``fd`` on stable storage before returning.

    On macOS fsync() only hands the data to the drive, which may keep it in its volatile cache through a
    power cut; ``F_FULLFSYNC`` asks the drive to write it out (Apple's fsync(2) and fcntl(2) pages).
    File systems that refuse ``F_FULLFSYNC`` (some network and FAT volumes) get fsync(), the best they offer.
    """
    full = getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:
            pass
    os.fsync(fd)


def sync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (so a rename into it survives a crash), to stable storage.

    Windows cannot open a folder as a file, and NTFS journals renames itself: folders are skipped there.
    Its fsync() needs a handle open for writing.
    """
    windows = sys.platform == "win32"
    if windows and path.is_dir():
        return
    fd = os.open(path, os.O_RDWR if windows else os.O_RDONLY)
    try:
        flush_to_disk(fd)
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs now (a process another user owns counts as running).

    On Windows ``os.kill(pid, 0)`` does not probe: it terminates the process, so the process is opened
    for a query instead.
    """
    if sys.platform == "win32":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes

    kernel32 = _kernel32()
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return kernel32.GetLastError() == ERROR_ACCESS_DENIED
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True  # it exists (it was opened) but says nothing more: keep its files
        return code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _kernel32():
    import ctypes

    return ctypes.WinDLL("kernel32", use_last_error=False)
