"""Output that is either complete or absent: atomic files and staged folders.

- `atomic_write(path, data)`: temporary file beside `path`, fsync, rename.
- `StagedFolder(out)`: every output file is written into a hidden staging
  folder beside `out`; `commit()` then renames the staging folder to `out`
  (one atomic rename when `out` does not exist yet) or moves each file into
  the existing `out`, with SIGINT/SIGTERM held back until the last rename is
  done.  Leaving the `with` block without a commit (an exception, Ctrl-C, a
  SIGTERM turned into an exception by the CLI) deletes the staging folder, so
  `out` never holds a half-written file and the input is never touched.

A SIGKILL cannot be caught: it may leave a hidden staging folder
(`.<out>.staging-<pid>-*` beside `out`, or `.staging-<pid>-*` inside it),
never a partial file under a real output name.  The next run into the same
`out` deletes staging folders whose process is gone.

Hand-written: the maintained atomic-file packages (atomicwrites is archived,
python-atomicwrites' successors write one file) do not stage a folder of
files and publish it with signals held back.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "StagedFolder", "signals_deferred"]

_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it into place.

    A reader never sees a half-written file, and an interrupted write leaves
    the previous file (if any) untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the block runs, then deliver what arrived.

    Python runs signal handlers in the main thread only, so a handler that
    records the signal is enough even when runtime threads receive it.
    Outside the main thread this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in _DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _remove_abandoned(folder: Path, prefix: str) -> None:
    """Delete staging folders left by killed runs (their process is gone); live runs keep theirs."""
    for p in folder.glob(prefix + "*"):
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if p.is_dir() and pid.isdigit() and _process_gone(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


class StagedFolder:
    """Write files into a hidden staging folder; `commit()` publishes them into `out`."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path: Path | None = None
        self.committed: list[Path] = []

    def __enter__(self) -> StagedFolder:
        # inside `out` when it exists, else beside it: either way on the same filesystem, so renames are atomic
        inside = self.out.is_dir()
        folder = self.out if inside else self.out.resolve().parent
        prefix = ".staging-" if inside else f".{self.out.name}.staging-"
        folder.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(folder, prefix)
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=folder))
        os.chmod(self.path, 0o755)
        return self

    def file(self, name: str) -> Path:
        """Where to write `name` inside the staging folder."""
        assert self.path is not None, "use StagedFolder as a context manager"
        return self.path / name

    def commit(self, order: list[str] | None = None) -> list[Path]:
        """Publish the staged files; `order` names files to move first (data before the model that uses it)."""
        assert self.path is not None
        names = sorted(p.name for p in self.path.iterdir())
        names = [n for n in (order or []) if n in names] + [n for n in names if n not in (order or [])]
        for n in names:
            with open(self.path / n, "rb+") as f:
                os.fsync(f.fileno())
        with signals_deferred():
            if not self.out.exists():
                os.rename(self.path, self.out)
            else:
                for n in names:
                    os.replace(self.path / n, self.out / n)
                os.rmdir(self.path)
            _fsync_dir(self.out.resolve().parent)
            self.path = None
        self.committed = [self.out / n for n in names]
        return self.committed

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
