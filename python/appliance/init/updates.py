"""The update channel: the checker started once the core has had its start.

The checker (``appliance.channel.check``) is a process of its own: whatever the channel
sends is read there, never in PID 1. The init starts it only where the image names a
channel (UPDATE_CHANNEL=, or the ESP's file) and has its root metadata, with a writable
ESP (it stages there), and puts its lines on the console. When it has staged an image
it asks for the reboot into the trial with SIGTERM, as for any shutdown.
"""

from __future__ import annotations

import os

from appliance.esp import layout
from appliance.init.helper import EspHelper
from appliance.initconf import CHANNEL_ROOT, UPDATE_STATE

DIST_PACKAGES = "/usr/lib/python3/dist-packages"  # Debian's python3-tuf, and what it needs


class Updates(EspHelper):
    name = "update channel"
    esp_file = layout.UPDATE_CHANNEL
    not_writable = "not checking: the ESP is not writable (an update could not be staged)"
    python_path = (DIST_PACKAGES,)

    def configured(self) -> bool:
        return bool(self.config.update_channel)

    def wanted(self) -> bool:
        return os.path.exists(self.root(CHANNEL_ROOT)) and super().wanted()

    def argv(self) -> list[str]:
        return ["appliance.channel.check", "--esp", self.root(layout.MOUNT), "--state", self.root(UPDATE_STATE)]
