"""Surviving faults: termination signals, two runs into one directory, and a full disk.

- :func:`handle_signals` turns SIGTERM (what cluster schedulers send before they kill) and SIGINT into
  :class:`Interrupted`, raised in the main thread.  Every write is atomic (temp file + rename), so an
  interruption at any point keeps the last complete shard or checkpoint; long loops call
  :func:`progress` so the message can say where the run stopped.
- :class:`OutputLock` is an exclusive ``flock`` on ``DIR/.scaffold-sae.lock`` holding the owner's pid,
  host and command.  The kernel drops a flock when its process dies, so a lock file left by a killed
  run is free and is taken over; a live owner makes a second run fail at once, naming it.
- :func:`disk_full_error` turns ENOSPC / EDQUOT into one line naming the path and the space needed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".scaffold-sae.lock"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# ------------------------------------------------------------------------------------------ signals


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM or SIGINT; its message says where and how to resume."""

    def __init__(self, signum: int):
        self.signum = signum
        where = f" at {_progress['unit']} {_progress['count']}" if _progress["unit"] else ""
        super().__init__(f"interrupted{where} ({signal.Signals(signum).name}); rerun the same command to resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_progress: dict = {"unit": None, "count": 0}


def progress(unit: str, count: int) -> None:
    """Record that ``count`` ``unit``s (steps, shards, ...) are complete, for the interruption message."""
    _progress["unit"], _progress["count"] = unit, count


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Interrupted` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------ locks


class LockError(RuntimeError):
    """Another live run holds the output directory."""


_held: dict[Path, list] = {}  # resolved lock path -> [open file, depth]: re-entrant within a process


class OutputLock:
    """Exclusive lock on an output directory for the lifetime of a run (``with OutputLock(dir, "train"):``)."""

    def __init__(self, directory: str | Path, command: str, disposable: tuple[str, ...] = ()):
        self.directory, self.command = Path(directory), command
        self.disposable = disposable
        """Files a failed run may leave that hold no progress (e.g. the study's plan.json): removed with the
        folders this lock created when the run fails before writing anything else."""
        self.created: list[Path] = []

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    def __enter__(self) -> "OutputLock":
        if self.directory.exists() and not self.directory.is_dir():
            raise LockError(f"--out {self.directory} is a file: pass a folder (it is created if missing)")
        missing = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key not in _held:
            self.created = missing  # deepest first
        if key in _held:
            _held[key][1] += 1
            return self
        handle = open(key, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = read_owner(key)
            handle.close()
            who = (f"process {owner.get('pid')} on {owner.get('host')} ({owner.get('command')}, since "
                   f"{owner.get('started')})" if owner else "another process")
            raise LockError(f"{self.directory} is in use by {who}: wait for it to finish, stop it, or use "
                            "another --out") from None
        stale = read_owner(key)
        if stale and stale.get("pid") != os.getpid():
            print(f"note: taking over the lock of an earlier run (pid {stale.get('pid')}) that ended without "
                  f"releasing it: {key}", file=sys.stderr)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        handle.flush()
        _held[key] = [handle, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = self.path.resolve()
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            handle = entry[0]
            handle.seek(0)
            handle.truncate()  # an empty lock file: nobody holds it
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            if exc[0] is not None and self.created:
                self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """After a failure: the folders this lock created go again when they hold nothing but the lock and the
        disposable files, so that a run refused before any work leaves nothing behind."""
        left = {p.name for p in self.directory.iterdir()}
        if not left <= {LOCK_NAME, *self.disposable}:
            return
        for name in left:
            (self.directory / name).unlink()
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                return


def read_owner(path: Path) -> dict:
    """The owner record in a lock file ({} when empty or unreadable)."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------ disk


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _DISK_FULL


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def disk_full_error(path: str | Path, need_bytes: int | None, cls: type = OSError) -> Exception:
    """One line for a full disk: the path, the space the rest of the run needs, and what to do."""
    need = f"; about {_mb(need_bytes)} more is needed" if need_bytes else ""
    return cls(f"no space left on the device writing {path} ({_mb(free_bytes(path))} free{need}): free space "
               "or use another --out, then rerun the same command to resume")


def check_space(path: str | Path, need_bytes: int, cls: type = OSError) -> None:
    """Fail before starting when the filesystem of ``path`` has less than ``need_bytes`` free."""
    if need_bytes > free_bytes(path):
        raise disk_full_error(path, need_bytes, cls)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


__all__ = ["Interrupted", "handle_signals", "progress", "OutputLock", "LockError", "read_owner",
           "is_disk_full", "free_bytes", "disk_full_error", "check_space"]
