"""Boot the image in QEMU/OVMF and drive its serial console (pexpect): for tests and users."""
