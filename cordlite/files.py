"""Files that survive a kill. Atomic writes: a reader (or a process killed mid-write) sees the old
file or the new one, never half of one (a hidden temp file in the same directory, fsync,
os.replace). Append-only JSONL: rows are appended with fsync, and reading skips a last line that a
kill cut short, so a long job resumes from what it wrote."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path`, unique per process and thread, keeping the suffix (for formats
    chosen by extension)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_modes(path: Path) -> None:
    """Give `path` (a file, or a folder and all it holds) the modes an ordinary write gives under the
    umask: some writers (safetensors, tempfile.mkdtemp) make 0600 files and 0700 folders, which other
    users of a shared run or cache folder then cannot read."""
    mask = current_umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def io_error_of(e: BaseException, path: str | Path | None = None) -> OSError | None:
    """An error of a writer that hides the OS error inside its own class (safetensors' SafetensorError:
    "... I/O error: No space left on device (os error 28)"; a RuntimeError from torch) as the OSError
    it is, naming `path` (when known); None when `e` carries no OS error."""
    where = None if path is None else str(path)
    if isinstance(e, OSError):
        return e if e.filename is not None else OSError(e.errno, e.strerror, where)
    match = re.search(r"\(os error (\d+)\)", str(e))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code), where)


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows to a JSONL file (created with its folder if missing), flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The JSON-object rows of an append-only JSONL file ([] if it does not exist); a line that is
    not a whole JSON object (cut short by a kill) is skipped: its work is redone."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (ours counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_dead_temps(folder: Path, pattern: str) -> list[Path]:
    """Delete the entries of `folder` matching the glob `pattern` whose name ends in "-PID" of a
    process that no longer exists: temporary files and directories left by a killed writer. Those
    of live processes (another writer at work) are left alone."""
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in sorted(folder.glob(pattern)):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an older one is removed only after the move is ready."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    ordinary_modes(tmp)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(x: object) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.2f}"
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
