"""What the tests share: an ESP in a folder, the ESP's layout, a supervisor's duties that
record, and the QEMU machine fixture's helpers. Paths come from ``appliance.esp.layout``,
never spelled here."""

from __future__ import annotations

from pathlib import Path

from appliance.esp import layout
from appliance.esp.files import MountedEsp
from appliance.init.supervise import Duties

__all__ = ["Recorder", "esp_folder", "layout", "on_esp"]


def esp_folder(tmp_path: Path) -> MountedEsp:
    """A folder standing in for a mounted ESP."""
    return MountedEsp(str(tmp_path))


def on_esp(tmp_path: Path, path: str) -> Path:
    """Where an ESP path (``layout.BACKOFF``) lies in a folder standing in for the ESP."""
    return tmp_path / path.lstrip("/")


class Recorder(Duties):
    """A supervisor's duties that keep what the core wrote and what the loop said."""

    def __init__(self, stderr: bytearray | None = None, said: list[str] | None = None) -> None:
        self.stderr = stderr if stderr is not None else bytearray()
        self.said = said if said is not None else []
        self.flushes = 0
        self.healthy_calls = 0

    def output(self, data: bytes) -> None:
        self.stderr.extend(data)

    def say(self, text: str) -> None:
        self.said.append(text)

    def flush(self) -> None:
        self.flushes += 1

    def healthy(self) -> None:
        self.healthy_calls += 1
