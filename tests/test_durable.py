"""durable.py makes the call each platform needs: F_FULLFSYNC where it exists, no os.kill probe on Windows.

No Mac or Windows here: the platform is forced by monkeypatching, and the tests check which call is made.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import types

import pytest

from mlx_embedgemma import durable


class Calls(list):
    def fcntl(self, fd, op):
        self.append(("fcntl", op))
        if op == "refused":
            raise OSError(45, "Operation not supported")


def fake_fcntl(calls: Calls, full_fsync: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(F_FULLFSYNC=full_fsync, fcntl=calls.fcntl)


@pytest.fixture
def fsyncs(monkeypatch) -> list:
    seen = []
    monkeypatch.setattr(durable.os, "fsync", lambda fd: seen.append(("fsync", fd)))
    return seen


def test_macos_flushes_with_full_fsync_not_fsync(tmp_path, monkeypatch, fsyncs):
    calls = Calls()
    monkeypatch.setattr(durable, "fcntl", fake_fcntl(calls, "F_FULLFSYNC"))
    (tmp_path / "f").write_bytes(b"x")
    durable.sync_path(tmp_path / "f")
    durable.sync_path(tmp_path)
    assert calls == [("fcntl", "F_FULLFSYNC")] * 2 and fsyncs == []


def test_a_file_system_refusing_full_fsync_gets_fsync(tmp_path, monkeypatch, fsyncs):
    calls = Calls()
    monkeypatch.setattr(durable, "fcntl", fake_fcntl(calls, "refused"))
    (tmp_path / "f").write_bytes(b"x")
    durable.sync_path(tmp_path / "f")
    assert calls == [("fcntl", "refused")] and len(fsyncs) == 1


def test_linux_has_no_full_fsync_and_fsyncs(tmp_path, fsyncs):
    if sys.platform != "linux":
        pytest.skip("checks the Linux fcntl module")
    (tmp_path / "f").write_bytes(b"x")
    durable.sync_path(tmp_path / "f")
    assert not hasattr(durable.fcntl, "F_FULLFSYNC") and len(fsyncs) == 1


def test_windows_fsyncs_files_opened_for_writing_and_skips_folders(tmp_path, monkeypatch, fsyncs):
    monkeypatch.setattr(durable, "fcntl", None)
    monkeypatch.setattr(durable.sys, "platform", "win32")
    opened = []
    real_open = os.open
    monkeypatch.setattr(durable.os, "open", lambda path, flags: opened.append(flags) or real_open(path, flags))
    (tmp_path / "f").write_bytes(b"x")
    durable.sync_path(tmp_path / "f")
    durable.sync_path(tmp_path)
    assert opened == [os.O_RDWR] and len(fsyncs) == 1


def test_posix_liveness_probes_with_signal_zero():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert durable.process_alive(os.getpid())
    assert not durable.process_alive(child.pid)


class FakeKernel32:
    """OpenProcess/GetExitCodeProcess/CloseHandle/GetLastError for a table of pids."""

    def __init__(self, processes: dict[int, int | str]):
        self.processes = processes  # pid -> exit code, or "denied"
        self.closed = []

    def OpenProcess(self, access, inherit, pid):
        assert access == durable.PROCESS_QUERY_LIMITED_INFORMATION
        self.last = durable.ERROR_ACCESS_DENIED if self.processes.get(pid) == "denied" else 87  # invalid parameter
        return pid if isinstance(self.processes.get(pid), int) else 0

    def GetLastError(self):
        return self.last

    def GetExitCodeProcess(self, handle, code_ref):
        ctypes.cast(code_ref, ctypes.POINTER(ctypes.c_ulong)).contents.value = self.processes[handle]
        return 1

    def CloseHandle(self, handle):
        self.closed.append(handle)


def test_windows_liveness_queries_the_process_and_never_signals_it(monkeypatch):
    kernel32 = FakeKernel32({10: durable.STILL_ACTIVE, 11: 0, 12: "denied"})
    monkeypatch.setattr(durable.sys, "platform", "win32")
    monkeypatch.setattr(durable, "_kernel32", lambda: kernel32)

    def kill(pid, sig):
        raise AssertionError("os.kill terminates the process on Windows")

    monkeypatch.setattr(durable.os, "kill", kill)
    assert durable.process_alive(10)  # running
    assert not durable.process_alive(11)  # exited, its handle still held somewhere
    assert durable.process_alive(12)  # another user's
    assert not durable.process_alive(13)  # no such process
    assert kernel32.closed == [10, 11]
