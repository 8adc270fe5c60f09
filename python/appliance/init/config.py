"""The init's configuration: baked into the image, plus switches on the kernel command line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple

CONFIG_PATH = "/etc/appliance/init.json"


class Config(NamedTuple):
    core: str = "/usr/lib/appliance/core"
    modules: tuple[str, ...] = ()
    runtime_log_cap: int = 1024 * 1024
    history_records: int = 16
    history_bytes: int = 8 * 1024 * 1024
    esp_free_floor: int = 16 * 1024 * 1024
    esp_wait_seconds: float = 10.0
    shutdown_grace_seconds: float = 10.0
    core_memory_max: str | None = None
    profile: str = "default"
    healthy_after_seconds: float = 600.0
    backoff_first_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    core_watchdog_seconds: float = 30.0  # the core's software watchdog, once it pings (it may set its own)
    hw_watchdog_seconds: int = 60  # the timeout given to every hardware watchdog the init pets
    switches: Mapping[str, str] = {}  # appliance.* from the kernel command line (never mutated)

    @property
    def hold(self) -> bool:
        """appliance.hold=1 on the kernel command line: never reboot, for debugging."""
        return self.switches.get("hold", "0") not in ("0", "no", "false", "")


def parse_cmdline(text: str) -> dict[str, str]:
    """``appliance.KEY=VALUE`` (or bare ``appliance.KEY``, meaning 1) from /proc/cmdline."""
    out = {}
    for word in text.split():
        if word.startswith("appliance."):
            key, _, value = word[len("appliance."):].partition("=")
            out[key] = value if "=" in word else "1"
    return out


def load(path: str = CONFIG_PATH, cmdline: str = "") -> tuple[Config, list[str]]:
    """The configuration, and the problems met reading it (the init says them, then goes on
    with the defaults: a broken configuration must not stop the core or the reboot)."""
    problems: list[str] = []
    values: dict[str, object] = {}
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = Config._fields
        for key, value in raw.items():
            if key not in known or key == "switches":
                problems.append(f"unknown setting {key!r} in {path} (ignored)")
                continue
            if key == "modules":
                value = tuple(str(m) for m in value)
            values[key] = value
    except (OSError, ValueError, TypeError) as e:  # (json's errors are ValueErrors)
        problems.append(f"could not read {path}: {e} (using defaults)")
    return Config(**values, switches=parse_cmdline(cmdline)), problems  # type: ignore[arg-type]
