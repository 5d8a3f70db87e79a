"""Write-then-rename helpers: a reader (or a later `--resume`) never sees a half-written file.

A file is written inside a hidden scratch folder beside its target, named
`.NAME.HOST-PID-RANDOM.partial`, and renamed over the target when complete. The scratch name never
ends in the target's suffix, so `glob("*.tflite")` never finds a half file; the file inside keeps the
target's name, so writers that pick a format from the extension (Keras `.keras`, matplotlib `.png`,
NumPy `.npy`) behave as for the real name. A process killed mid-write leaves its scratch folder
behind: `remove_partials` deletes those whose process is gone, and the commands call it on every
folder they write to (run folders, export scratch space, caches, predict-batch output).

`held` keeps a second command out of a folder one is writing (training, export, predict-batch output): an flock,
which ends with its process however that ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from petal.errors import DiskFullError, FolderInUseError

PARTIAL_SUFFIX = ".partial"
LOCK_NAME = ".petal.lock"  # inside a folder one command at a time writes (held)
# No space, over quota, over the file-size limit (ulimit -f; Python ignores SIGXFSZ, so writes fail instead).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # a dot would end the name's owner tag


def owner_tag() -> str:
    """`HOST-PID-`: names files so that a later process can tell whether their writer is gone."""
    return f"{_host()}-{os.getpid()}-"


def writer_is_gone(tagged: str) -> bool:
    """Whether the process whose `owner_tag()` starts `tagged` (after any prefix ending in '.' or
    'shard-') ran on this host and has exited."""
    owner = tagged.rsplit(".", 1)[-1].split("-")
    if len(owner) < 3 or not owner[-2].isdigit() or "-".join(owner[:-2]) != _host():
        return False
    return not _alive(int(owner[-2]))


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A new folder `PREFIX.HOST-PID-RANDOM.partial` in `parent` (default: the system's temporary folder),
    removed with everything in it when the block ends, however it ends."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}.{owner_tag()}", suffix=PARTIAL_SUFFIX, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a path with `target`'s name inside a scratch folder beside it; move it over `target` only if
    the block succeeds (after fsync), so `target` is either the old file or the whole new one."""
    target = Path(target)
    try:  # the scratch folder's own making included: a folder that cannot be written is named as the target's
        with scratch_dir(f".{target.name}", target.parent) as scratch:
            tmp_path = scratch / target.name
            yield tmp_path
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, target)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS or exc.errno is None:  # NumPy reports a short write without errno
            reason = os.strerror(exc.errno) if exc.errno else f"short write: {exc}"
            raise DiskFullError(f"{target}: cannot be written ({reason}); "
                                f"{shutil.disk_usage(target.parent).free / 1e6:,.0f} MB free there") from None
        raise type(exc)(exc.errno, exc.strerror, str(target)) from None  # named as the user knows it, not the scratch file


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    # surrogateescape: a file name that is not valid UTF-8 is written back as the very bytes it was read from
    write_bytes(target, text.encode("utf-8", "surrogateescape"))


def write_json(target: str | os.PathLike, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_partials(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the scratch folders under `folder` that a killed petal process on this host left; returns
    them. Scratch folders of live processes, or of other hosts sharing the folder, are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    candidates = folder.rglob(f"*{PARTIAL_SUFFIX}") if recursive else folder.glob(f"*{PARTIAL_SUFFIX}")
    for path in list(candidates):
        if not writer_is_gone(path.name[: -len(PARTIAL_SUFFIX)]):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def contents(folder: str | os.PathLike) -> list[Path]:
    """What `folder` holds, without the lock file `held` puts there: what "empty" means for a held folder."""
    return [p for p in Path(folder).iterdir() if p.name != LOCK_NAME]


@contextlib.contextmanager
def held(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold `folder` for this process while the block runs, so a second command that would write there is
    refused instead of mixing its files in: an OS lock (flock) on FOLDER/.petal.lock, which ends with the process
    however it ends. The folder is made if need be; the lock file is removed at the end, and the folder too when
    this made it and nothing else was written there.

    Raises:
        FolderInUseError: another process holds it (named by its pid and command).
    """
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first: removed in that order
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        try:  # never through a link: a planted .petal.lock -> elsewhere would be truncated and written
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise FolderInUseError(f"{path}: cannot be used as petal's lock file ({exc.strerror or exc}); remove it") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FolderInUseError(f"{path}: not a regular file, so not petal's lock file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderInUseError(f"{folder}: in use by {holder}; wait for it to end, or choose another folder") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the one there now
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"petal {command} (pid {os.getpid()} on {socket.gethostname()})".encode())
        yield folder
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
            for made_folder in made:
                made_folder.rmdir()  # only if empty: stops at the first that holds something
        os.close(fd)
