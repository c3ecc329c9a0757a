"""`index --watch`: the store follows files added, edited (in bursts), renamed and deleted, and a
folder that disappears stops the watch with a message and nothing lost. Real file-system events
(watchdog), the tiny model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("watchdog", reason="watch mode needs the [search] extra (watchdog)")

from mlx_embedgemma import load  # noqa: E402
from mlx_embedgemma.search import SearchIndex  # noqa: E402
from mlx_embedgemma.search.watch import FolderGone, watch_folder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::mlx_embedgemma.embedder.TruncationWarning")
WAIT_S = 60  # generous: the machine running the tests may be busy


class Watcher:
    """watch_folder in a thread, its reports collected, stopped at the end."""

    def __init__(self, folder: Path, db: Path, model, debounce_s: float = 0.5):
        self.reports, self.error, self.stop = [], None, threading.Event()
        self.db, self.folder = db, folder

        def update():
            with SearchIndex(db) as store:
                return store.index_folder(folder, model)

        def run():
            try:
                watch_folder(folder, update, self.reports.append, debounce_s=debounce_s, extensions=[".txt", ".md"],
                             stop=self.stop)
            except Exception as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        time.sleep(0.5)  # the observer is scheduled

    def paths(self) -> set[str]:
        with SearchIndex(self.db) as store:
            return {Path(p).name for (p,) in store.db.execute("SELECT path FROM files")}

    def until(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if condition():
                return
            if self.error:
                raise self.error
            time.sleep(0.1)
        pytest.fail(f"the watcher did not {what} within {WAIT_S} s (reports: {self.reports})")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)


@pytest.fixture(scope="module")
def model(tiny_matryoshka):
    return load(tiny_matryoshka)


@pytest.fixture
def watched(tmp_path, model):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("first note", encoding="utf-8")
    db = tmp_path / "notes.db"
    with SearchIndex(db) as store:
        store.index_folder(folder, model)
    watcher = Watcher(folder, db, model)
    yield folder, watcher
    watcher.close()


def test_watch_follows_adds_edits_renames_and_deletes(watched):
    folder, w = watched
    (folder / "b.md").write_text("# B\nsecond note", encoding="utf-8")
    w.until(lambda: w.paths() == {"a.txt", "b.md"}, "add b.md")

    # A burst of saves within the debounce window is embedded once.
    n = len(w.reports)
    for i in range(5):
        (folder / "a.txt").write_text(f"first note, edit {i}", encoding="utf-8")
        time.sleep(0.05)
    w.until(lambda: any(r.updated for r in w.reports[n:]), "re-embed a.txt")
    time.sleep(1.5)  # nothing else is pending
    assert sum(len(r.updated) for r in w.reports[n:]) == 1 and sum(r.chunks_embedded for r in w.reports[n:]) == 1
    with SearchIndex(w.db) as store:
        assert store.db.execute("SELECT text FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path LIKE '%a.txt'"
                                ).fetchall() == [("first note, edit 4",)]

    (folder / "b.md").rename(folder / "c.md")
    w.until(lambda: w.paths() == {"a.txt", "c.md"}, "follow the rename")
    assert any(r.renamed for r in w.reports)  # moved, not re-embedded

    (folder / "a.txt").unlink()
    w.until(lambda: w.paths() == {"c.md"}, "drop a.txt")

    # Files it does not index (another ending, hidden) start no update.
    n = len(w.reports)
    (folder / "image.png").write_bytes(b"\x89PNG")
    (folder / ".hidden.txt").write_text("x", encoding="utf-8")
    time.sleep(1.5)
    assert len(w.reports) == n


def test_a_folder_that_disappears_stops_the_watch_and_keeps_the_store(watched, tmp_path):
    folder, w = watched
    folder.rename(tmp_path / "elsewhere")
    w.thread.join(WAIT_S)
    assert isinstance(w.error, FolderGone) and "disappeared" in str(w.error) and "keeps everything" in str(w.error)
    assert w.paths() == {"a.txt"}


def test_watch_without_watchdog_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_watchdog(name, *args, **kwargs):
        if name.startswith("watchdog"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_watchdog)
    with pytest.raises(ImportError, match=r"mlx-embedgemma\[search\]"):
        watch_folder(tmp_path, lambda: None, lambda r: None)
