"""Look inside a Unified Kernel Image: its PE sections and the initrd's files.

Used by ``make size`` and by the tests that prove what boots is systemd-free.
"""

from __future__ import annotations

import stat
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pefile

from appliance.builder.deps import SITE_DIR as DEPS_DIR

MIB = 1024 * 1024
CPIO_MAGIC = (b"070701", b"070702")
TRAILER = "TRAILER!!!"


def sections(uki: Path) -> dict[str, bytes]:
    """The UKI's PE sections by name, each trimmed to its real (virtual) size."""
    pe = pefile.PE(str(uki), fast_load=True)
    try:
        out = {}
        for s in pe.sections:
            name = s.Name.rstrip(b"\0").decode("ascii", "replace")
            out[name] = s.get_data()[: s.Misc_VirtualSize]
        return out
    finally:
        pe.close()


def decompress(data: bytes) -> bytes:
    """Decompress an initrd (zstd, xz, gzip) or return it as it is (plain cpio)."""
    if data[:4] == b"\x28\xb5\x2f\xfd":
        cmd = ["zstd", "-dc"]
    elif data[:6] == b"\xfd7zXZ\x00":
        cmd = ["xz", "-dc"]
    elif data[:2] == b"\x1f\x8b":
        cmd = ["gzip", "-dc"]
    else:
        return data
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


@dataclass(frozen=True)
class Entry:
    path: str  # without a leading slash, as in the archive
    mode: int
    size: int
    data: bytes = field(repr=False, default=b"")

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def link_target(self) -> str:
        return self.data.decode() if self.is_symlink else ""


def parse_cpio(data: bytes) -> list[Entry]:
    """Entries of a 'newc' cpio archive, including several concatenated ones."""
    entries: list[Entry] = []
    pos = 0
    while pos + 110 <= len(data):
        if data[pos:pos + 6] not in CPIO_MAGIC:
            if data[pos:pos + 1] == b"\0":  # padding between concatenated archives
                pos += 1
                continue
            raise ValueError(f"not a newc cpio archive at offset {pos}")
        header = data[pos:pos + 110]
        fields = [int(header[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode("utf-8", "surrogateescape")
        data_start = (name_start + namesize + 3) & ~3
        body = data[data_start:data_start + filesize]
        pos = (data_start + filesize + 3) & ~3
        if name == TRAILER:
            continue
        entries.append(Entry(path=name.lstrip("./") if name not in (".", "./") else "", mode=mode,
                             size=filesize, data=body))
    return entries


def initrd_entries(uki: Path) -> list[Entry]:
    return parse_cpio(decompress(sections(uki)[".initrd"]))


@dataclass
class SizeReport:
    uki: int
    kernel: int
    initrd_compressed: int
    initrd_uncompressed: int
    cmdline: str
    top: list[tuple[str, int]]
    dependencies: list[tuple[str, int]] = field(default_factory=list)  # the core's, by top-level name

    def summary(self) -> str:
        text = (f"size: UKI {self.uki / MIB:.1f} MiB = kernel {self.kernel / MIB:.1f} MiB"
                f" + initrd {self.initrd_compressed / MIB:.1f} MiB"
                f" (uncompressed {self.initrd_uncompressed / MIB:.1f} MiB)")
        if self.dependencies:
            total = sum(size for _, size in self.dependencies)
            text += f"\nsize: the core's Python dependencies: {total / MIB:.2f} MiB of it (uncompressed)"
        return text

    def full(self) -> str:
        lines = [self.summary(), f"size: kernel command line: {self.cmdline}",
                 "size: largest directories in the initrd:"]
        lines += [f"size:   {size / MIB:7.2f} MiB  /{path}" for path, size in self.top]
        if self.dependencies:
            lines.append(f"size: the core's Python dependencies, in /{DEPS_DIR}:")
            lines += [f"size:   {size / MIB:7.2f} MiB  {name}" for name, size in self.dependencies]
        return "\n".join(lines)


def size_report(uki: Path, top: int = 12, depth: int = 3) -> SizeReport:
    secs = sections(uki)
    raw = decompress(secs[".initrd"])
    per_dir: dict[str, int] = defaultdict(int)
    per_dep: dict[str, int] = defaultdict(int)
    deps_parts = PurePosixPath(DEPS_DIR).parts
    for e in parse_cpio(raw):
        if e.is_file:
            path = PurePosixPath(e.path)
            key = "/".join(path.parent.parts[:depth])
            per_dir[key] += e.size
            parts = path.parts[1:] if path.parts[:1] == (".",) else path.parts
            if parts[:len(deps_parts)] == deps_parts and len(parts) > len(deps_parts):
                per_dep[parts[len(deps_parts)]] += e.size
    largest = sorted(per_dir.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return SizeReport(
        uki=uki.stat().st_size,
        kernel=len(secs.get(".linux", b"")),
        initrd_compressed=len(secs[".initrd"]),
        initrd_uncompressed=len(raw),
        cmdline=secs.get(".cmdline", b"").rstrip(b"\0").decode(errors="replace").strip(),
        top=largest,
        dependencies=sorted(per_dep.items(), key=lambda kv: kv[1], reverse=True),
    )
