"""``make bench``: our image against a systemd-based comparator, measured in one run."""
