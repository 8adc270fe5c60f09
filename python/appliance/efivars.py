"""The one door to the firmware's variables (efivarfs), for the init and the core.

efivarfs shows each variable as a file named ``<Name>-<vendor GUID>`` whose first four
bytes are the variable's attributes; ``read`` strips them, bounded, and every module
reads through here. The vendors (scopes) are named once:

- ``GLOBAL``: the UEFI specification's own (SecureBoot, BootCurrent, Boot####);
- ``LOADER``: systemd-boot's and the UKI stub's (LoaderDevicePartUUID, LoaderEntrySelected);
- ``APPLIANCE``: ours (ApplianceInitFailure).
"""

from __future__ import annotations

import os
import struct

EFIVARS = "/sys/firmware/efi/efivars"
GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # EFI_GLOBAL_VARIABLE
LOADER = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # the Boot Loader Interface (systemd-boot, the stub)
APPLIANCE = "6f0ed740-9d20-46f1-8429-56c26738b531"  # the appliance's own vendor GUID
ATTRIBUTES = 4  # bytes before the data
NV_BS_RT = struct.pack("<I", 0x7)  # non-volatile, boot service and run-time access
MAX_READ = 65536
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def path(name: str, vendor: str, root: str = EFIVARS) -> str:
    return os.path.join(root, f"{name}-{vendor}")


def read(name: str, vendor: str, root: str = EFIVARS, limit: int = MAX_READ) -> bytes | None:
    """The variable's data (at most ``limit`` bytes, its attributes stripped; b"" for a
    variable shorter than its attributes); None when it does not exist or cannot be read."""
    try:
        with open(path(name, vendor, root), "rb") as f:
            raw = f.read(ATTRIBUTES + limit)
    except OSError:
        return None
    return raw[ATTRIBUTES:]


def read_string(name: str, vendor: str, root: str = EFIVARS, limit: int = 1024) -> str:
    """A NUL-terminated UTF-16 string variable (the Boot Loader Interface's), or ""."""
    data = read(name, vendor, root, limit)
    return data.decode("utf-16-le", "replace").split("\0", 1)[0] if data else ""


def _make_mutable(file: str) -> None:
    """efivarfs marks variables it does not know immutable: clear that to replace or erase one."""
    import fcntl
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        flags = struct.unpack("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
        if flags & FS_IMMUTABLE_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<i", flags & ~FS_IMMUTABLE_FL))
    except OSError:
        pass  # a plain directory in tests, or a kernel without the flag: unlink decides
    finally:
        os.close(fd)


def erase(name: str, vendor: str, root: str = EFIVARS) -> None:
    """Remove the variable (gone already is done); OSError when it cannot be."""
    file = path(name, vendor, root)
    try:
        _make_mutable(file)
        os.unlink(file)
    except FileNotFoundError:
        return


def write(name: str, vendor: str, data: bytes, root: str = EFIVARS) -> None:
    """Replace the variable with ``data`` (non-volatile); OSError when it cannot be."""
    erase(name, vendor, root)  # efivarfs appends to or refuses an existing variable
    fd = os.open(path(name, vendor, root), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, NV_BS_RT + data)  # efivarfs takes a variable in one write
    finally:
        os.close(fd)


def secure_boot(root: str = EFIVARS) -> bool | None:
    """Whether the firmware enforces Secure Boot; None when it does not say."""
    data = read("SecureBoot", GLOBAL, root, 16)
    return None if data is None else data[:1] == b"\x01"
