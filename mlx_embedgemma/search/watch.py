"""`index DIR --watch`: keep a store current while files change.

File-system events (the ``watchdog`` library, the ``[search]`` extra) only say *that* something
changed; the update itself is the incremental index pass (changed files re-embedded, renamed ones moved,
deleted ones dropped, each file one transaction), run once the folder has been quiet for ``debounce_s``,
so a burst of saves re-embeds a file once and an update killed halfway leaves a consistent store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .store import IndexReport

POLL_S = 0.2


class FolderGone(FileNotFoundError):
    """The watched folder disappeared; the store keeps everything it held."""


def watch_folder(
    folder: str | Path,
    update: Callable[[], IndexReport],
    on_report: Callable[[IndexReport], None],
    debounce_s: float = 1.0,
    extensions: Iterable[str] = (),
    stop: threading.Event | None = None,
) -> None:
    """Call ``update`` after each burst of changes to ``folder`` until ``stop`` is set (or Ctrl-C)."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        raise ImportError("--watch needs the watchdog library: pip install 'mlx-embedgemma[search]'") from None
    root = Path(folder).expanduser().resolve()
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    stop = stop or threading.Event()
    last_change = [0.0]  # monotonic time of the latest relevant event; 0 when none is pending

    def relevant(path: str | bytes) -> bool:
        parts = Path(str(path)).relative_to(root).parts if str(path).startswith(str(root)) else ()
        if any(p.startswith(".") for p in parts):  # hidden files and folders are never indexed
            return False
        return not exts or str(path).lower().endswith(exts)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            if event.event_type in ("opened", "closed_no_write"):
                return
            paths = [event.src_path, getattr(event, "dest_path", "")]
            # A folder renamed or deleted moves every file in it: no extension to go by.
            if (event.is_directory and event.event_type in ("moved", "deleted")) or any(p and relevant(p) for p in paths):
                last_change[0] = time.monotonic()

    observer = Observer()
    observer.schedule(Handler(), str(root), recursive=True)
    observer.start()
    try:
        while not stop.wait(POLL_S):
            if not root.is_dir():
                raise FolderGone(f"{root} disappeared; the store keeps everything it held. "
                                 "Run `index` again (with --watch) once the folder is back")
            if last_change[0] and time.monotonic() - last_change[0] >= debounce_s:
                last_change[0] = 0.0
                try:
                    on_report(update())
                except FileNotFoundError:
                    if not root.is_dir():
                        continue  # said by the check above on the next turn
                    raise
    finally:
        observer.stop()
        observer.join()
