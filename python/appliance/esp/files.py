"""The ESP's files behind one interface, whoever holds the ESP.

On the machine the ESP is mounted (``MountedEsp``, every write made durable the way
FAT needs: see ``fsutil``); on a host it is a partition of a stick or an image file,
read and written through mtools (``appliance.media.espfs.EspImage``). The formats
(history, state files, boot entries, the update log, staging) are written against
this interface, so the init and the host tools read each file with the same code.
Paths are the ESP's own (``appliance.esp.layout``).
"""

from __future__ import annotations

import os
from typing import Protocol

from appliance.esp import fsutil


class EspFiles(Protocol):
    def list(self, directory: str) -> list[str]:
        """The names in ``directory``, sorted; [] when it does not exist."""

    def exists(self, path: str) -> bool: ...

    def read(self, path: str, limit: int | None = None) -> bytes:
        """The file's bytes (at most ``limit``); OSError (or the host's error) when it cannot be read."""

    def size(self, path: str) -> int: ...

    def write(self, path: str, data: bytes) -> None:
        """Replace or create ``path`` (its directories too): a cut leaves the old file or the new one."""

    def append(self, path: str, data: bytes) -> None: ...

    def rename(self, old: str, new: str) -> None:
        """Within one directory, to a name not in use."""

    def delete(self, path: str, sync: bool = True) -> None:
        """``sync=False``: several removals in one directory, made durable by ``sync_dir``."""

    def sync_dir(self, directory: str) -> None: ...

    def free(self) -> int: ...

    def where(self, path: str) -> str:
        """The path as a person finds it (``/esp/appliance/...`` on the machine)."""


class MountedEsp:
    """The ESP as a mounted file system (on the machine: /esp; in tests, a folder)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def where(self, path: str) -> str:
        return self.root + path

    def list(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(self.where(directory)))
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(self.where(path))

    def read(self, path: str, limit: int | None = None) -> bytes:
        with open(self.where(path), "rb") as f:
            return f.read() if limit is None else f.read(limit)

    def size(self, path: str) -> int:
        return os.stat(self.where(path)).st_size

    def write(self, path: str, data: bytes) -> None:
        fsutil.make_dirs(os.path.dirname(self.where(path)))
        fsutil.atomic_write(self.where(path), data)

    def append(self, path: str, data: bytes) -> None:
        fd = os.open(self.where(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fsutil.write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, old: str, new: str) -> None:
        fsutil.rename(self.where(old), self.where(new))

    def delete(self, path: str, sync: bool = True) -> None:
        if sync:
            fsutil.remove(self.where(path))
        else:
            os.unlink(self.where(path))

    def sync_dir(self, directory: str) -> None:
        fsutil.fsync_dir(self.where(directory))

    def make_dirs(self, directory: str) -> None:
        fsutil.make_dirs(self.where(directory))

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize
