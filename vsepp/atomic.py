"""Atomic writes of files and directories: write beside the target, fsync, then rename.

The one implementation every part uses (models, indexes, features, the demo set, JSON).

`write_bytes_atomic` / `write_text_atomic` / `write_json_atomic` replace one file: a temporary
file in the same directory is written, fsynced and renamed over the target, and the directory
is fsynced, so a reader sees the old file or the new one, never a part.

`atomic_directory(target)` yields an empty temporary directory next to `target` (same file
system, so renames are atomic). When the `with` body returns, every file in it is fsynced
and it takes `target`'s place:

- on Linux with ``renameat2(RENAME_EXCHANGE)`` the two directories trade names in one
  atomic step, so `target` always names a complete directory (old, then new);
- elsewhere the old one is renamed aside and the new one renamed in; a crash between the
  two renames leaves the old directory whole under ``.NAME.old-*`` (and `index.load_index` says so).

When the body raises, the temporary directory is removed and `target` is untouched.
Writers of the same parent directory are serialised with `flock`, which also makes it
safe to sweep temporary directories that a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2  # from <linux/fs.h>
_AT_FDCWD = -100


def tmp_prefix(target: Path) -> str:
    """Name prefix of the temporary directories built for `target`."""
    return f".{target.name}.tmp-"


def old_prefix(target: Path) -> str:
    """Name prefix under which the previous `target` waits while being swapped out."""
    return f".{target.name}.old-"


def fsync_dir(path: Path) -> None:
    """fsync a directory so that the names in it (renames, new files) are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, children before parents."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file `path` with `data`: temporary file beside it, fsync, rename, fsync."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600; the file is meant to be read by other users (a server) too.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(
    path: str | os.PathLike[str], data: Any, *, indent: int | None = 1, ascii_only: bool = False
) -> None:
    """`write_bytes_atomic` of `data` as UTF-8 JSON (`ascii_only`: \\u escapes, which also
    carry file names that are not UTF-8, held as surrogates, through the round trip)."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=ascii_only))


@contextlib.contextmanager
def writer_lock(target: str | os.PathLike[str]) -> Iterator[None]:
    """Exclusive lock for writers of `target` (an flock on its parent directory).

    Hold it across read-modify-write (appending) so that two writers cannot both start
    from the same old directory and lose one update; pass ``locked=True`` to
    `atomic_directory` inside it.
    """
    parent = Path(target).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names `a` and `b`; False where the OS cannot (then nothing moved)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def swap_in(new: Path, target: Path) -> None:
    """Put the complete directory `new` at `target`, removing what was there before."""
    parent = target.parent
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        # `new` now names the previous directory.
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = Path(tempfile.mkdtemp(prefix=old_prefix(target), dir=parent))
        os.rmdir(old)  # only the unique name is wanted; rename needs it free
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(parent)


def _sweep_leftovers(target: Path) -> None:
    """Remove temporary directories of earlier, killed writers (caller holds the lock)."""
    for entry in target.parent.iterdir():
        stale_tmp = entry.name.startswith(tmp_prefix(target))
        # A leftover .old-* is the only copy when the target is missing: keep it then.
        stale_old = entry.name.startswith(old_prefix(target)) and target.exists()
        if (stale_tmp or stale_old) and entry.is_dir() and not entry.is_symlink():
            log.warning("removing %s, left behind by an interrupted write", entry)
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], *, locked: bool = False) -> Iterator[Path]:
    """Yield an empty directory that replaces `target` once the body has completed.

    Takes `writer_lock(target)` unless the caller says it already holds it (`locked`).
    """
    target = Path(target).absolute()
    if target.is_symlink():
        raise ValueError(f"{target} is a symlink; give the real directory")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext() if locked else writer_lock(target):
        _sweep_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(target), dir=parent))
        try:
            # mkdtemp makes 0700; a server running as another user must be able to read it.
            os.chmod(tmp, 0o755)
            yield tmp
            fsync_tree(tmp)
            swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
