"""The standard library as one zip archive: called by mkosi.finalize on the built tree.

The kernel unpacks the whole initrd before it runs /init (and every initcall that asks
for a module waits for it), and under emulation the time it takes grows with the bytes
it decompresses: the standard library's ~1,000 loose .py and .pyc files were 19 MB of
the 52 MB, kept in RAM for as long as the machine runs. Python looks for
``/usr/lib/python313.zip`` first on ``sys.path``, and its zipimport reads compiled
modules from it; tracebacks still show every line with its source text, because
``linecache`` asks the module's loader (the zipimporter) for the source, which is in
the archive beside the bytecode.

What stays loose: the C extensions (``lib-dynload``, a zip cannot hold them), files that
are not Python (data a module may open next to its ``__file__``), the packages in
``LOOSE`` (whose code reads such files), and ``os.py``, the landmark by which Python
finds its prefix. The bytecode is the image's own (compiled by the image's python in
mkosi.prepare.chroot), renamed from ``__pycache__/x.cpython-313.pyc`` to ``x.pyc``, the
place zipimport looks for it. Only unchecked hash-based bytecode goes in: zipimport would
find timestamp-based bytecode stale (the members carry no such time) and compile the
source at every boot instead, so a module compiled that way stays loose, and is counted.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Top-level names left loose: venv (it reads its activate scripts through __file__), the C
# extensions, third-party directories, the bytecode caches themselves.
LOOSE = ("venv", "lib-dynload", "site-packages", "dist-packages", "__pycache__")
LANDMARK = "os.py"
# The sources are compressed in the archive (only a traceback reads them); the bytecode is
# stored: zstd compresses it with the rest of the initrd, better than deflate would, and
# zipimport reads it without inflating. Both compressed made the kernel's part no
# shorter and Python's start 0.1-0.2 s longer, for 1.2 MiB more UKI (docs/bench.md, "The
# boot's weight").
COMPRESS_BYTECODE = False
# The flags word of a .pyc (PEP 552): bit 0 hash-based, bit 1 check the source.
UNCHECKED_HASH = 0b01
# A fixed time for every member, so that the same tree makes the same archive.
EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class Zipped:
    modules: int = 0
    left_loose: int = 0  # modules whose bytecode is not unchecked-hash (or missing)
    bytes_before: int = 0
    archive_bytes: int = 0

    @property
    def files_removed(self) -> int:
        return 2 * self.modules  # each module's source and bytecode


def _bytecode(source: Path, cache_tag: str) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.{cache_tag}.pyc"


def _unchecked(pyc: bytes) -> bool:
    return len(pyc) >= 16 and struct.unpack_from("<I", pyc, 4)[0] == UNCHECKED_HASH


def _member(z: zipfile.ZipFile, name: str, data: bytes, compress: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    z.writestr(info, data, compresslevel=9 if compress else None)


def zip_stdlib(stdlib: Path, archive: Path, cache_tag: str = "cpython-313") -> Zipped:
    """Move every module of ``stdlib`` whose unchecked bytecode is beside it into
    ``archive`` (source compressed, bytecode stored), removing the loose files. Any other
    module stays loose: the archive never holds source that zipimport would compile at
    each boot."""
    done = Zipped()
    sources = sorted(p for p in stdlib.rglob("*.py")
                     if p.is_file() and not p.is_symlink()
                     and p.relative_to(stdlib).parts[0] not in LOOSE
                     and p.relative_to(stdlib).as_posix() != LANDMARK)
    moved: list[Path] = []
    tmp = archive.with_name(archive.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for src in sources:
            pyc = _bytecode(src, cache_tag)
            code = pyc.read_bytes() if pyc.is_file() else b""
            if not _unchecked(code):
                done.left_loose += 1
                continue
            name = src.relative_to(stdlib).as_posix()
            _member(z, name, src.read_bytes(), compress=True)
            _member(z, name[:-3] + ".pyc", code, compress=COMPRESS_BYTECODE)
            moved += [src, pyc]
            done.modules += 1
    os.replace(tmp, archive)
    for p in moved:
        done.bytes_before += p.stat().st_size
        p.unlink()
    for d in sorted((p for p in stdlib.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if not any(d.iterdir()):  # a package left with nothing (its modules are in the archive)
            d.rmdir()
    done.archive_bytes = archive.stat().st_size
    return done


STDLIB = "usr/lib/python3.13"
ARCHIVE = "usr/lib/python313.zip"  # the first entry of the image's python's sys.path


def zip_image_stdlib(root: Path, cache_tag: str = "cpython-313") -> str:
    """Zip the standard library of the image tree at ``root``; the line the build says."""
    z = zip_stdlib(root / STDLIB, root / ARCHIVE, cache_tag)
    loose = f"; {z.left_loose} left loose (no unchecked bytecode)" if z.left_loose else ""
    return (f"stdlib: {z.modules} modules ({z.bytes_before / 1048576:.1f} MiB in {z.files_removed} files) "
            f"in /{ARCHIVE} ({z.archive_bytes / 1048576:.1f} MiB){loose}")
