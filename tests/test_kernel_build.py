"""KERNEL=appliance's build, without building (tests/test_qemu_kernel.py boots what it built)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.builder import kernel, mkosi


def test_a_fragment_reads_as_the_options_it_sets() -> None:
    text = "# a comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x,y\"\n\nCONFIG_D=12\n"
    assert kernel.wanted_options(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "\"x,y\"", "CONFIG_D": "12"}


def test_an_option_the_configuration_did_not_take_is_named() -> None:
    wanted = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "y", "CONFIG_E": "n"}
    config = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n"  # E is absent: not set, as asked
    wrong = kernel.config_mismatches(wanted, config)
    assert [w.split(" ")[0] for w in wrong] == ["CONFIG_B=n", "CONFIG_C=y"]
    assert "the kernel's configuration has y" in wrong[0] and "has n" in wrong[1]


def test_a_new_source_version_or_a_changed_fragment_is_a_new_build() -> None:
    key = kernel.build_key("6.12.118-1", "CONFIG_A=y\n")
    assert key.startswith("6.12.118-1-") and key == kernel.build_key("6.12.118-1", "CONFIG_A=y\n")
    assert key != kernel.build_key("6.12.119-1", "CONFIG_A=y\n") != kernel.build_key("6.12.118-1", "CONFIG_A=m\n")


def test_only_the_two_kernels_are_taken() -> None:
    kernel.check_choice("debian")
    kernel.check_choice("appliance")
    with pytest.raises(kernel.KernelError, match=r"KERNEL='linux': choose KERNEL=debian .* or KERNEL=appliance"):
        kernel.check_choice("linux")


def test_the_fragment_builds_no_modules_keeps_the_hardening_and_names_each_class(repo: Path) -> None:
    text = (repo / kernel.FRAGMENT).read_text()
    wanted = kernel.wanted_options(text)
    assert wanted["CONFIG_MODULES"] == "n" and wanted["CONFIG_LOCK_DOWN_IN_EFI_SECURE_BOOT"] == "y"
    assert not [o for o, v in wanted.items() if v == "m"], "no modules: every driver built in"
    # No mitigation off, no writable kernel text, no lockdown or stack protector given up.
    weakened = [o for o, v in wanted.items() if v == "n" and re.search(
        r"MITIGATION|STRICT_KERNEL_RWX|STACKPROTECTOR|RANDOMIZE|LOCKDOWN|HARDENED|FORTIFY|SECCOMP", o)]
    assert weakened == []
    for driver in ("SATA_AHCI", "BLK_DEV_NVME", "USB_XHCI_HCD", "USB_EHCI_HCD", "USB_STORAGE", "USB_UAS",
                   "VIRTIO_BLK", "SCSI_VIRTIO", "MMC_SDHCI_PCI", "USB_HID", "HID_GENERIC", "VIRTIO_NET", "E1000",
                   "E1000E", "IGB", "IGC", "R8169", "I6300ESB_WDT", "ITCO_WDT", "SP5100_TCO", "EFI_VARS_PSTORE",
                   "HW_RANDOM_VIRTIO", "HW_RANDOM_TPM", "DRM_SIMPLEDRM", "FRAMEBUFFER_CONSOLE", "VFAT_FS", "EXT4_FS",
                   "EFIVAR_FS"):
        assert wanted[f"CONFIG_{driver}"] == "y", driver
    for cls in ("storage", "USB keyboards", "NICs", "watchdogs", "efi-pstore", "hardware RNGs",
                "the firmware's framebuffer", "hardening"):
        assert re.search(rf"^# -- .*{re.escape(cls)}", text, re.M | re.I), cls


def test_mkosi_gets_our_kernel_as_a_tree_and_no_debian_kernel(tmp_path: Path) -> None:
    cmd = mkosi.mkosi_command(Path("/r"), Path("/b/render"), Path("/o"), Path("/c"), "default", network=True,
                              kernel_tree=Path("/b/kernel-tree"))
    assert "--extra-tree=/b/kernel-tree:/" in cmd and "--package=kmod" in cmd
    assert "--kernel-command-line=firmware_class.path=/usr/lib/appliance/firmware" in cmd
    assert not [a for a in cmd if "linux-image" in a or "firmware-realtek" in a or "kernel-modules-include" in a]
    debian = mkosi.mkosi_command(Path("/r"), Path("/b/render"), Path("/o"), Path("/c"), "default")
    assert "--package=linux-image-amd64,tiny-initramfs" in debian and not [a for a in debian if "kernel-tree" in a]
    assert "--kernel-command-line=cryptomgr.notests" in debian
    assert not [a for a in cmd if "cryptomgr" in a]  # ours runs no self-tests to skip


def test_the_built_kernel_goes_where_mkosi_looks_for_one(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"MZ kernel")
    built = kernel.Built(image, "6.12.118-appliance", "6.12.118-1", "6.12.118-1-0123456789ab")
    tree = kernel.image_tree(built, tmp_path / "tree")
    assert (tree / "usr/lib/modules/6.12.118-appliance/vmlinuz").read_bytes() == b"MZ kernel"
    assert [p.name for p in (tree / "usr/lib/modules").iterdir()] == ["6.12.118-appliance"]
    assert not (tree / "usr/lib/appliance").exists()
    firmware = tmp_path / "firmware/rtl_nic"
    firmware.mkdir(parents=True)
    (firmware / "rtl8168h-2.fw").write_bytes(b"fw")
    tree = kernel.image_tree(built, tmp_path / "tree", firmware.parent)  # NETWORK=dhcp: r8169's firmware
    assert (tree / "usr/lib/appliance/firmware/rtl_nic/rtl8168h-2.fw").read_bytes() == b"fw"
    assert (tree / "usr/lib/modules/6.12.118-appliance/vmlinuz").exists()


def test_a_failed_build_shows_its_tail_and_where_its_log_is(tmp_path: Path) -> None:
    said: list[str] = []
    log = tmp_path / "build.log"
    with pytest.raises(kernel.KernelError, match=rf"the whole log is {re.escape(str(log))}"):
        kernel.run_make(["sh", "-c", "for i in $(seq 40); do echo line $i; done; echo 'error: no' >&2; exit 2"],
                        {"PATH": "/usr/bin:/bin"}, log, said.append, 0.0)
    assert said[-1] == "kernel: error: no" and len(said) == kernel.TAIL and said[0] == "kernel: line 17"
    assert "line 1\n" in log.read_text()
