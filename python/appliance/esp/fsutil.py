"""Crash-safe writes on FAT, which has no journal: temporary name, fsync, rename, fsync.

On vfat a file's size and first cluster live in its directory entry, and after a
rename the new entry is filled in when the file's inode is written back: fsync on
the directory alone leaves the old name on disk (seen in QEMU after a power cut).
So after the rename the file is fsynced again under its new name, then the directory.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a power cut leaves the old or the new file."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_path(path)
    fsync_dir(os.path.dirname(path) or ".")


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """os.makedirs, durably: on vfat a new directory's entry in its parent stays in a
    dirty buffer until writeback, and a power cut loses the directory with everything
    fsynced inside it (seen in QEMU). Each directory made is synced, then its parent."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path:
        make_dirs(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(path)
    fsync_dir(parent or ".")


def rename(old: str, new: str) -> None:
    """Rename durably (a new name, in the same directory): see the module's note."""
    os.rename(old, new)
    fsync_path(new)
    fsync_dir(os.path.dirname(new) or ".")


def remove(path: str) -> None:
    """Unlink and make the removal durable."""
    os.unlink(path)
    fsync_dir(os.path.dirname(path) or ".")
