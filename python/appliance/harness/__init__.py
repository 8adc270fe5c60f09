"""The harness's library: boot an image in QEMU/OVMF and drive its serial console
(pexpect), read and write its ESP between boots, make hostile disks. The tests, the
bench and the programs in ``appliance.tools`` (``make qemu``, ``make soak``) use it."""
