"""Lay the UKI into a GPT disk image with one FAT32 EFI System Partition.

No loop devices and no root: sfdisk writes the partition table into the file,
mkfs.fat formats at an offset, mtools copies the UKI in. The ESP is sized to hold the
UKI plus ``free`` bytes for the crash history, which mkosi's Format=esp cannot do.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.esp import gpt
from appliance.esp import layout as esp_layout

MIB = 1024 * 1024
# The partition name marks the ESP as ours: the init's fallback (no
# LoaderDevicePartUUID) only ever uses an ESP that carries it. Both come from the init.
ESP_TYPE = str(gpt.ESP_TYPE).upper()
FAT_LABEL = "APPLIANCE"
ALIGN = MIB  # first partition at 1 MiB, as every partitioning tool does
FAT32_OVERHEAD = 4 * MIB  # FATs, reserved sectors and slack for a disk this size
MIN_ESP = 64 * MIB  # FAT32 needs >= 65525 clusters; OVMF refuses smaller FAT32


@dataclass(frozen=True)
class Layout:
    disk_size: int
    esp_offset: int
    esp_size: int


def plan(uki_size: int, free: int) -> Layout:
    """Where the ESP goes and how big the disk is, for a UKI and the wanted free space."""
    esp = uki_size + free + FAT32_OVERHEAD
    esp = max(MIN_ESP, -(-esp // MIB) * MIB)
    # 1 MiB before (primary GPT, alignment), 1 MiB after (backup GPT).
    return Layout(disk_size=ALIGN + esp + MIB, esp_offset=ALIGN, esp_size=esp)


def sfdisk_script(layout: Layout, disk_id: uuid.UUID, part_id: uuid.UUID) -> str:
    start = layout.esp_offset // 512
    size = layout.esp_size // 512
    return (
        "label: gpt\n"
        f"label-id: {str(disk_id).upper()}\n"
        f"start={start}, size={size}, type={ESP_TYPE}, uuid={str(part_id).upper()}, name=\"{esp_layout.NAME}\"\n"
    )


def _run(cmd: list[str], **kw: object) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{cmd[0]} failed (exit {e.returncode}): {e.stderr.strip() or e.stdout.strip()}") from e


REMOVABLE_PATH = esp_layout.REMOVABLE_PATH


def make_disk(uki: Path, out: Path, free: int = 64 * MIB,
              disk_id: uuid.UUID | None = None, part_id: uuid.UUID | None = None,
              files: dict[str, Path] | None = None) -> Layout:
    """Write ``out``: GPT, one ESP with the UKI at the removable-media path, or with
    ``files`` (ESP path -> file) instead (the boot manager, the entries, the UKI...)."""
    files = files or {REMOVABLE_PATH: uki}
    layout = plan(sum(f.stat().st_size for f in files.values()), free)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with tmp.open("wb") as f:
        f.truncate(layout.disk_size)
    script = sfdisk_script(layout, disk_id or uuid.uuid4(), part_id or uuid.uuid4())
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp)], input=script)
    sectors = layout.esp_offset // 512
    _run(["mkfs.fat", "-F", "32", "-n", FAT_LABEL, f"--offset={sectors}",
          str(tmp), str(layout.esp_size // 1024)])
    img = f"{tmp}@@{layout.esp_offset}"
    dirs = sorted({"/".join(path.split("/")[:i]) for path in [REMOVABLE_PATH, *files]
                   for i in range(2, path.count("/") + 1)}, key=lambda d: (d.count("/"), d))
    _run(["mmd", "-i", img, *(f"::{d}" for d in dirs)])  # parents first
    for path, source in files.items():
        _run(["mcopy", "-i", img, str(source), f"::{path}"])
    tmp.rename(out)
    return layout


def make_bmap(image: Path, bmap: Path) -> None:
    """The block map bmaptool uses to write only the used blocks when flashing."""
    _run(["bmaptool", "create", "-o", str(bmap), str(image)])
