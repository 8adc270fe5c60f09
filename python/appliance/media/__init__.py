"""Removable media on the host: flashing an image to a stick, reading crash dumps off one."""
