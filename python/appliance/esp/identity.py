"""The running image's version and build id, from os-release (the UKI's .osrel).

The build writes ``IMAGE_VERSION=`` and ``BUILD_ID=`` there (appliance.builder.identity);
the init says them at every boot and every record on the ESP carries them.
"""

from __future__ import annotations

from typing import NamedTuple

OS_RELEASE = "/usr/lib/os-release"
BUILT_AT = "APPLIANCE_BUILT_AT"  # seconds since 1970; outside the build id (which names the content)
MAX_BYTES = 16 * 1024


class Identity(NamedTuple):
    version: str
    build_id: str
    built_at: int = 0  # when the image was built (seconds since 1970): the clock's floor

    def describe(self) -> str:
        return f"{self.version or 'unknown'} ({self.build_id or 'no build id'})"


def parse(data: bytes) -> dict[str, str]:
    """os-release's KEY=value lines (values unquoted); anything else is ignored."""
    fields = {}
    for line in data[:MAX_BYTES].decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            fields[key] = value
    return fields


def read(path: str = OS_RELEASE) -> Identity:
    try:
        with open(path, "rb") as f:
            fields = parse(f.read(MAX_BYTES))
    except OSError:
        fields = {}
    return from_fields(fields)


def from_fields(fields: dict[str, str]) -> Identity:
    """The identity in os-release's fields (parsed)."""
    built = fields.get(BUILT_AT, "")
    return Identity(fields.get("IMAGE_VERSION", ""), fields.get("BUILD_ID", ""),
                    int(built) if built.isdigit() and len(built) < 12 else 0)
