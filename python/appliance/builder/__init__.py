"""Host-side build steps: render the settings, run mkosi, lay out the disk image."""
