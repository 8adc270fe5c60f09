"""The FAT's dirty flag, read from its boot sector: whether it was not unmounted cleanly."""

from __future__ import annotations

FAT32_STATE_OFFSET = 0x41  # BS_Reserved1 in a FAT32 boot sector: Linux keeps its dirty flag here
FAT_STATE_DIRTY = 0x01


def fat_dirty(device: str) -> bool:
    """Whether the FAT was not unmounted cleanly (Linux sets the flag at a read-write
    mount and clears it at unmount or read-only remount). Unreadable counts as dirty."""
    try:
        with open(device, "rb") as f:
            boot = f.read(512)
    except OSError:
        return True
    if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
        return True
    if boot[82:87] == b"FAT32":
        return bool(boot[FAT32_STATE_OFFSET] & FAT_STATE_DIRTY)
    return bool(boot[0x25] & FAT_STATE_DIRTY)  # FAT12/16 keep it earlier
