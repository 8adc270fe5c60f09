"""The init: PID 1 inside the image. Standard library only (Debian's python3)."""
