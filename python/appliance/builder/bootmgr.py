"""The ESP's boot path: systemd-boot, its configuration and the first image's entry.

Every image boots through systemd-boot (a boot manager only: no systemd comes with
it), so that an update can be tried and fall back by itself: see
appliance.esp.bootentries. With SECURE_BOOT=shim it is shim's next stage
(``grubx64.efi``); otherwise it sits at the removable-media path. It comes from the
package ``systemd-boot-efi`` of the image's release and is signed with the image's key.
"""

from __future__ import annotations

from pathlib import Path

from appliance.builder import debfiles, signing
from appliance.esp import bootentries, layout

PACKAGE = {"systemd-boot-efi": "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"}
REMOVABLE_PATH = layout.REMOVABLE_PATH
FIRST_GENERATION = 1


def fetch(sources_dir: Path, cache: Path) -> Path:
    return debfiles.fetch(sources_dir, cache, PACKAGE)["systemd-boot-efi"]


def esp_files(uki: Path, version: str, boot_manager: Path, work: Path,
              key: signing.Key | None) -> dict[str, Path]:
    """The ESP's files (ESP path -> file in ``work`` or given): systemd-boot (signed when
    ``key``) at the removable-media path, its configuration, and ``uki`` as the first,
    committed, image."""
    work.mkdir(parents=True, exist_ok=True)
    if key is not None:
        signing.sign(boot_manager, work / "systemd-bootx64.efi", key)
        boot_manager = work / "systemd-bootx64.efi"
    conf = work / "loader.conf"
    conf.write_text(bootentries.LOADER_CONF_TEXT)
    first = bootentries.Entry(FIRST_GENERATION, None)
    path = bootentries.uki_path(FIRST_GENERATION, version)
    entry = work / first.name
    entry.write_text(bootentries.entry_text(FIRST_GENERATION, version, path))
    return {REMOVABLE_PATH: boot_manager, layout.LOADER_CONF: conf,
            f"{layout.ENTRIES_DIR}/{first.name}": entry, path: uki}
