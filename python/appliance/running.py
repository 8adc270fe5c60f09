"""What the init's helper processes (the crash reporter, the update checker) ask of the
running machine: a stable id that reveals nothing of it, and whether the network is up."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable

from appliance.esp import kvfile
from appliance.initconf import NETWORK_STATE

NETWORK_POLL = 1.0
PRODUCT_UUID = "/sys/class/dmi/id/product_uuid"


def machine_id(path: str = PRODUCT_UUID) -> str:
    """A stable id of this machine that reveals nothing of it: a hash of the firmware's
    product UUID (also after a reflash), else of the host name."""
    try:
        with open(path, "rb") as f:
            basis = f.read(256).strip()
    except OSError:
        basis = b""
    return hashlib.sha256(b"appliance-machine " + (basis or socket.gethostname().encode())).hexdigest()[:16]


def wait_for_network(say: Callable[[str], None], who: str, path: str = NETWORK_STATE) -> bool:
    """True once the network is up; False when this boot has none."""
    said = False
    while True:
        try:
            with open(path, "rb") as f:
                state = kvfile.parse(f.read(4096)).get("state", "")
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            state = ""
        if state == "up":
            return True
        if not said:
            say(f"{who}: waiting for the network")
            said = True
        time.sleep(NETWORK_POLL)


def write_state(path: str, values: dict[str, object]) -> None:
    """A helper's state file for the init (``key = value`` lines), whole or not at all;
    never raises (the state is a hint for the way out, not a record)."""
    try:
        with open(path + ".tmp", "wb") as f:
            f.write(kvfile.render({k: str(v) for k, v in values.items()}))
        os.replace(path + ".tmp", path)
    except OSError:
        pass
