"""One writer per OUT_DIR: OUT_DIR/.maskgen-lock names the driver that writes there (host, pid,
start time) and carries a heartbeat it refreshes. A second driver is refused (LockHeld); a
stale lock (a dead pid on this host, or no heartbeat for STALE_S) is taken over; `force`
breaks any lock.

The lock sits in OUT_DIR itself, not in plan/: `--overwrite` clears plan/ but must keep it.
It is created with os.link of a complete temp file: atomic, content and all, on NFS too.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from maskgen.pipeline.paths import temp_sibling

LOCK_NAME = ".maskgen-lock"
HEARTBEAT_S = 30.0  # how often the holder refreshes its heartbeat
STALE_S = 300.0  # a heartbeat older than this is a dead driver's (any host)


class LockHeld(RuntimeError):
    """Another driver writes to this OUT_DIR."""


@dataclass
class LockInfo:
    host: str
    pid: int
    started: float  # time.time()
    heartbeat: float
    token: str  # tells our lock from a later one with the same host and pid

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}, started {when}"

    def stale_reason(self, now: float) -> str | None:
        """Why this lock no longer holds (None: its driver may be alive)."""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"pid {self.pid} is not running"
        age = now - self.heartbeat
        if age > STALE_S:
            return f"no heartbeat for {age:.0f} s"
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_path(out_dir: Path) -> Path:
    return Path(out_dir) / LOCK_NAME


def read_lock(out_dir: Path) -> LockInfo | None:
    """The lock's holder; None when there is no lock."""
    return _read_file(lock_path(out_dir))


def _read_file(path: Path) -> LockInfo | None:
    """A broken file (never written by maskgen: writes are atomic) reads as a long-dead holder."""
    try:
        data = json.loads(path.read_text())
        return LockInfo(**{k: data[k] for k in LockInfo.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockInfo(host="?", pid=-1, started=0.0, heartbeat=0.0, token="broken")


class RunLock:
    """The lock this process holds; a daemon thread keeps its heartbeat fresh."""

    def __init__(self, out_dir: Path, info: LockInfo):
        self.path = lock_path(out_dir)
        self.info = info
        self.lost: str | None = None  # set when another driver broke the lock (--force)
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # a heartbeat never lands after release()
        self._thread = threading.Thread(target=self._beat, name="maskgen-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.refresh()

    def refresh(self) -> bool:
        """Write a new heartbeat; False (and `lost` set) when the lock is no longer ours.

        (A --force between the read and the replace would be overwritten: --force is a person's
        call that the other driver is gone, and that window is a millisecond.)"""
        with self._mutex:
            if self._stop.is_set():
                return self.lost is None
            holder = read_lock(self.path.parent)
            if holder is None or holder.token != self.info.token:
                taker = holder.describe() if holder else "nobody (it was removed)"
                self.lost = f"the lock of {self.path.parent} was taken over by {taker}: stopping"
                return False
            self.info.heartbeat = time.time()
            _write_replace(self.path, self.info)
            return True

    def release(self) -> None:
        with self._mutex:
            self._stop.set()
            holder = read_lock(self.path.parent)
            if holder is not None and holder.token == self.info.token:
                self.path.unlink(missing_ok=True)


def _write_replace(path: Path, info: LockInfo) -> None:
    tmp = temp_sibling(path)
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, path)


def _try_create(path: Path, info: LockInfo) -> bool:
    tmp = temp_sibling(path)
    tmp.write_text(json.dumps(asdict(info)))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _break(path: Path, seen: LockInfo) -> None:
    """Remove the lock `seen`, and only it: another driver may have replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.broken-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_file(aside)
    if moved is not None and moved.token != seen.token:  # not the one we judged: put it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def acquire(out_dir: Path, *, force: bool = False, on_note=lambda message: None) -> RunLock:
    """Take OUT_DIR's lock (creating OUT_DIR); raise LockHeld when a live driver holds it.

    `on_note` gets one line when a stale lock is taken over or a lock is broken with `force`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(out_dir)
    now = time.time()
    info = LockInfo(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
    for _ in range(5):  # a lost race with another driver: look again
        if _try_create(path, info):
            return RunLock(out_dir, info)
        holder = read_lock(out_dir)
        if holder is None:
            continue
        reason = "--force" if force else holder.stale_reason(time.time())
        if reason is None:
            raise LockHeld(
                f"another maskgen run writes to {out_dir} ({holder.describe()}); "
                f"wait for it, or use --force if it is gone"
            )
        on_note(f"took over the lock of {out_dir} from {holder.describe()} ({reason})")
        _break(path, holder)
    raise LockHeld(f"cannot take the lock {path}: other drivers keep taking it")
