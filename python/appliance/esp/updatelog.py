"""The update log on the ESP (``layout.UPDATE_LOG``): one line per outcome, with the time
(UTC), kept within ``LOG_MAX`` by dropping its older half. Written by the init, by the
core's ``appliance.update`` and by ``make update`` on a host, through ``EspFiles``."""

from __future__ import annotations

import time

from appliance.esp import layout
from appliance.esp.files import EspFiles

LOG_MAX = 64 * 1024  # beyond this the older half is dropped


def log_line(line: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{stamp} {line.replace(chr(10), ' ')}\n".encode()


def trimmed(old: bytes) -> bytes:
    """The newer half of a log, in whole lines."""
    keep = old[len(old) // 2:]
    return keep[keep.find(b"\n") + 1:]


def append(files: EspFiles, line: str) -> None:
    """Add ``line``; the older half goes first when the log would pass LOG_MAX."""
    data = log_line(line)
    try:
        size = files.size(layout.UPDATE_LOG)
    except FileNotFoundError:
        size = 0
    if size + len(data) > LOG_MAX:
        files.write(layout.UPDATE_LOG, trimmed(files.read(layout.UPDATE_LOG)) + data)
    else:
        files.append(layout.UPDATE_LOG, data)


def read(files: EspFiles, last: int = 20) -> list[str]:
    """Its last ``last`` lines; [] when there is none."""
    try:
        return files.read(layout.UPDATE_LOG).decode("utf-8", "replace").splitlines()[-last:]
    except FileNotFoundError:
        return []
