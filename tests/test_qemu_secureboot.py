"""Secure Boot, as stock PCs ship it: Microsoft's keys enrolled, enforced (OVMF with SMM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.harness.machine import Machine

pytestmark = pytest.mark.qemu


def test_an_unsigned_image_is_refused_before_any_kernel_runs(built_raw: Path, qemu_ready: None, tmp_path: Path,
                                                             log_dir: Path) -> None:
    """What a user meets today on a PC with Secure Boot on: the firmware refuses the image.
    (The signed image and its tests are the Secure Boot issue's work.)"""
    m = Machine(built_raw, tmp_path, name="secureboot-unsigned-refused", secure_boot="ms", log_dir=log_dir)
    with m:
        m.expect(r"BdsDxe: failed to load Boot\d+ [^\n]*: Access Denied", 180)
        m.watch(5)
        m.power_cut()
    log = m.output_since_start()
    assert "EFI stub" not in log and "init: " not in log
