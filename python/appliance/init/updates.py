"""The update channel: the checker started once the core has had its start.

The checker (``appliance.channel.check``) is a process of its own: whatever the channel
sends is read there, never in PID 1. The init starts it only where the image names a
channel (UPDATE_CHANNEL=, or the ESP's file) and has its root metadata, with a writable
ESP (it stages there), and puts its lines on the console. When it has staged an image
it asks for the reboot into the trial with SIGTERM, as for any shutdown.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from appliance.esp import layout
from appliance.esp.files import EspFiles
from appliance.init.helper import Helper
from appliance.init.root import Root
from appliance.initconf import CHANNEL_ROOT, UPDATE_STATE, Config

DIST_PACKAGES = "/usr/lib/python3/dist-packages"  # Debian's python3-tuf, and what it needs


class Updates:
    def __init__(self, config: Config, say: Callable[[str], None], root: Root,
                 esp: Callable[[], EspFiles | None]) -> None:
        self.config = config
        self.say = say
        self.root = root
        self.esp = esp  # the writable ESP's files, or None
        self.helper = Helper("update channel", say, root)

    def wanted(self) -> bool:
        if self.config.network != "dhcp" or not os.path.exists(self.root(CHANNEL_ROOT)):
            return False
        if self.config.update_channel:
            return True
        files = self.esp()
        return files is not None and files.exists(layout.UPDATE_CHANNEL)

    def start(self) -> None:
        if not self.wanted():
            return
        if self.esp() is None:
            self.say("update channel: not checking: the ESP is not writable (an update could not be staged)")
            return
        self.helper.start(["appliance.channel.check", "--esp", self.root(layout.MOUNT),
                           "--state", self.root(UPDATE_STATE)],
                          {"TMPDIR": self.root("/run/appliance")}, python_path=(DIST_PACKAGES,))
