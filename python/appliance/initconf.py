"""The init's configuration: baked into the image by the build, plus switches on the kernel
command line. The contract between ``appliance.builder`` and ``appliance.init``, so it
lives beside both: the build renders it, the init reads it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from appliance.esp import kvfile

CONFIG_PATH = "/etc/appliance/init.conf"
NETWORK_STATE = "/run/appliance/network"  # APPLIANCE_NETWORK: the network's state, for the core (network.py)
REPORTS_STATE = "/run/appliance/crash-reports"  # the crash reporter's: sending | waiting (appliance.report)
UPDATE_STATE = "/run/appliance/update"  # the update checker's: checking | waiting | staged (appliance.channel.check)
UPDATE_DEFER = "/run/appliance/update-defer"  # the core chooses when to restart into an update (appliance.update)
CHANNEL_ROOT = "/etc/appliance/channel-root.json"  # the channel's root metadata, built in (UPDATE_CHANNEL=)
HOSTNAME_FILE = "/etc/hostname"  # written by the build from HOSTNAME=, read by the init
DEFAULT_HOSTNAME = "appliance"
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def valid_hostname(name: str) -> bool:
    """RFC 1123: dot-separated labels of lower-case letters, digits and inner '-'; Linux
    keeps at most 64 bytes."""
    if not 1 <= len(name) <= 64:
        return False
    return all(0 < len(label) <= 63 and set(label) <= LABEL_CHARS and label[0] != "-" and label[-1] != "-"
               for label in name.split("."))


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
    network: str = "off"  # off | dhcp (make image NETWORK=)
    network_wait_seconds: float = 0.0  # hold the core back until the network is up, at most this (NETWORK_WAIT=)
    time_servers: tuple[str, ...] = ()  # SNTP servers, "ip" or "ip:port", before DHCP's (NTP=)
    syslog: str = ""  # host:port of a syslog receiver the console's lines go to (SYSLOG=); "" off
    crash_reports: str = ""  # a Sentry DSN the history's records are sent to (CRASH_REPORTS=); "" off
    crash_reports_ca: str = ""  # a CA bundle in the image for the tracker's TLS (CRASH_REPORTS_CA=)
    update_channel: str = ""  # the URL of the update channel the machine checks (UPDATE_CHANNEL=); "" off
    update_interval_seconds: float = 6 * 3600.0  # between checks, with a random spread (UPDATE_INTERVAL=)
    update_ca: str = ""  # a CA bundle in the image for the channel's TLS (UPDATE_CA=)
    data_size: str = "rest"  # the data partition made on the first boot: rest | none | bytes (DATA_SIZE=)
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


def _converter(default: object) -> Callable[[str], object]:
    """How a setting's text becomes its value: by the type of its default."""
    if isinstance(default, tuple):
        return lambda text: tuple(text.split())  # a list of words
    if default is None:
        return lambda text: text or None  # an optional text: empty means none
    if isinstance(default, (int, float)):
        return type(default)
    return str


def load(path: str = CONFIG_PATH, cmdline: str = "") -> tuple[Config, list[str]]:
    """The configuration, and the problems met reading it (the init says them, then goes on
    with the defaults: a broken configuration must not stop the core or the reboot)."""
    problems: list[str] = []
    values: dict[str, object] = {}
    try:
        with open(path, "rb") as f:
            raw = kvfile.parse(f.read())
        for key, text in raw.items():
            if key not in Config._fields or key == "switches":
                problems.append(f"unknown setting {key!r} in {path} (ignored)")
                continue
            try:
                values[key] = _converter(Config._field_defaults[key])(text)
            except ValueError:
                raise ValueError(f"{key} = {text!r} is not a valid value") from None
    except (OSError, ValueError) as e:  # (UnicodeDecodeError is a ValueError)
        problems.append(f"could not read {path}: {e} (using defaults)")
        values = {}
    return Config(**values, switches=parse_cmdline(cmdline)), problems  # type: ignore[arg-type]
