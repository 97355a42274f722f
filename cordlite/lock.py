"""One writer per folder: the exclusive lock every command that writes a folder (or a file) holds
for its whole life.

    with writer_lock(run_dir, "cordlite train", fix="set output.dir to another directory"):
        ...   # a second writer of run_dir is refused with LockError naming this process's PID

The lock is `fcntl.flock` on a hidden file beside the target (`runs/.cord.lock` for `runs/cord`):
beside, not inside, because some commands replace the whole target folder by a rename. The
kernel drops a flock when its process dies, however it dies, so a SIGKILLed holder leaves no
stuck lock: at most a stale lock file that the next writer takes over. A clean exit removes the
file. Taking the same target again in the same process (a suite that trains its runs in-process)
is allowed and counted.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

_HELD: dict[str, list] = {}  # lock path -> [fd, depth, pid]: this process's locks (a forked child's are not its own)


class LockError(RuntimeError):
    """Another live process is writing the same folder; the message names it and the way out."""


def lock_path(target: str | Path) -> Path:
    """The lock file of `target`: `.NAME.lock` in the folder that holds it."""
    target = Path(os.path.abspath(Path(target).expanduser()))
    return target.with_name(f".{target.name}.lock")


def _holder(path: Path) -> str:
    """What the live holder wrote into the lock file: "PID 123: cordlite train, since 01:02:03 UTC"."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return text or "PID unknown: it is starting"


def _acquire(path: Path, target: Path, command: str, fix: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockError(f"{target} is being written by another process ({_holder(path)}); wait for it to "
                            f"finish or stop it, or {fix}") from None
        # The holder before us unlinks the file before it lets go: a lock on an unlinked file is no lock.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    os.ftruncate(fd, 0)
    os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}: {command}, since {stamp}\n".encode())
    return fd


@contextmanager
def writer_lock(target: str | Path, command: str, fix: str = "choose another output directory"):
    """Hold the exclusive writer lock of `target` for the with-block; LockError if another process
    holds it. `command` is what a refused writer is told is running; `fix` ends its message."""
    path = lock_path(target)
    key = str(path)
    if key in _HELD and _HELD[key][2] == os.getpid():
        _HELD[key][1] += 1
    else:
        _HELD[key] = [_acquire(path, Path(target), command, fix), 1, os.getpid()]
    try:
        yield path
    finally:
        entry = _HELD[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            path.unlink(missing_ok=True)  # first the name, then the lock: see _acquire
            os.close(entry[0])
