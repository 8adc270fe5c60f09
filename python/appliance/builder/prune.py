"""Trim the image tree to what runs: called by mkosi.finalize on the built tree.

Executables are kept by name (an allow-list: the init needs python3, fsck.fat, mke2fs and
e2fsck); shared libraries are kept when something kept needs them (DT_NEEDED,
followed to the end). Everything else in the binary and library directories goes.
"""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
from pathlib import Path

from appliance.builder.elf import needed

KEEP_EXECUTABLES = {
    "default": ("usr/bin/python3", "usr/bin/python3.13", "usr/sbin/fsck.fat",
                # the data partition's (appliance.init.data)
                "usr/sbin/mke2fs", "usr/sbin/mkfs.ext4", "usr/sbin/e2fsck"),
    # The debug profile adds a shell for the serial console (mkosi.conf.d/20-debug.conf).
    "debug": ("usr/bin/busybox",),
}
BIN_DIRS = ("usr/bin", "usr/sbin", "usr/libexec", "usr/local/bin", "usr/local/sbin")
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib")
# Loaded with dlopen, which DT_NEEDED does not show: glibc loads libgcc_s to unwind
# a thread on pthread_exit/cancel.
ALWAYS_LIBS = ("libgcc_s.so.1", "ld-linux-x86-64.so.2")
# ELF files that are roots besides the executables: Python's C extensions, the core's.
ROOT_TREES = ("usr/lib/python3.13/lib-dynload", "usr/lib/python3", "usr/lib/appliance",
              "usr/local/lib/python3.13")  # the core's dependencies (build/deps.py)


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def find_lib(root: Path, name: str) -> Path | None:
    for d in LIB_DIRS:
        p = root / d / name
        if p.exists():
            return p
    return None


def library_closure(root: Path, roots: list[Path]) -> set[Path]:
    """Every library file (and the links naming it) reachable from ``roots``."""
    keep: set[Path] = set()
    todo = [n for n in ALWAYS_LIBS]
    for r in roots:
        todo += needed(r.read_bytes())
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        lib = find_lib(root, name)
        if lib is None:
            continue
        keep.add(lib)
        real = lib.resolve()
        # resolve() follows links inside the tree as if it were /: map back under root.
        if not str(real).startswith(str(root.resolve())):
            real = root / str(real).lstrip("/")
        keep.add(real)
        if real.exists():
            todo += needed(real.read_bytes())
    return keep


# Written by mkosi.postinst.chroot while dpkg's database is still there: the files of the
# core's own Debian packages (build/packages.py), whose libraries stay with what they need.
PACKAGE_FILES = "usr/lib/appliance/packages.files"


def package_libraries(root: Path) -> set[Path]:
    """The library files of the core's packages (a ctypes library has no DT_NEEDED to it)."""
    listing = root / PACKAGE_FILES
    if not listing.is_file():
        return set()
    found = set()
    for line in listing.read_text(errors="replace").splitlines():
        p = root / line.strip().lstrip("/")
        if line.strip() and ".so" in p.name and (p.is_file() or p.is_symlink()):
            found.add(p)
    return found


def prune(root: Path, profile: str = "default") -> tuple[int, int]:
    """Remove what does not run. (files removed, bytes freed)."""
    keep_exec = {root / p for p in KEEP_EXECUTABLES["default"]}
    if profile in KEEP_EXECUTABLES and profile != "default":
        keep_exec |= {root / p for p in KEEP_EXECUTABLES[profile]}
    removed = freed = 0

    def remove(p: Path) -> None:
        nonlocal removed, freed
        try:
            freed += p.lstat().st_size
            p.unlink()
            removed += 1
        except OSError:
            pass

    for d in BIN_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if (p.is_file() or p.is_symlink()) and p not in keep_exec:
                remove(p)

    wanted_libs = package_libraries(root)
    roots = [p for p in keep_exec | wanted_libs if p.exists() and not p.is_symlink() and _is_elf(p)]
    for tree in ROOT_TREES:
        base = root / tree
        if base.is_dir():
            roots += [p for p in base.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
    keep_libs = library_closure(root, roots) | wanted_libs

    libdir = root / "usr/lib/x86_64-linux-gnu"
    for p in sorted(libdir.iterdir()) if libdir.is_dir() else []:
        if ".so" in p.name and (p.is_file() or p.is_symlink()) and p not in keep_libs:
            remove(p)
    for sub in ("security", "perl-base", "gconv", "engines-3", "ossl-modules"):
        subdir = libdir / sub
        if subdir.is_dir():
            for p in sorted(subdir.rglob("*"), reverse=True):
                if p.is_file() or p.is_symlink():
                    remove(p)
    return removed, freed


def decompress_modules(root: Path) -> int:
    """Store kernel modules uncompressed: the initrd is compressed as a whole, and a
    kernel decompressing each .ko.xz at boot costs seconds under emulation. Then
    modules.dep is rebuilt to name the new files. Returns the number of modules."""
    count = 0
    for kdir in sorted((root / "usr/lib/modules").glob("*")):
        if not (kdir / "kernel").is_dir():
            continue
        for ko in sorted(kdir.rglob("*.ko.xz")):
            ko.with_suffix("").write_bytes(lzma.decompress(ko.read_bytes()))
            ko.unlink()
            count += 1
        if count:
            subprocess.run(["depmod", "--basedir", str(root), kdir.name], check=True)
    return count


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else os.environ["BUILDROOT"])
    profile = argv[1] if len(argv) > 1 else os.environ.get("PROFILE", "") or "default"
    removed, freed = prune(root, profile)
    n = decompress_modules(root)
    print(f"prune: stored {n} kernel modules uncompressed")
    print(f"prune: removed {removed} files ({freed / 1048576:.1f} MiB) that nothing in the appliance runs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
