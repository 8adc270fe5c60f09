import shutil
import subprocess
import sys
from pathlib import Path

from appliance.builder import elf, inspect, prune


def test_elf_needed_reads_dt_needed() -> None:
    names = elf.needed(Path(sys.executable).resolve().read_bytes())
    assert any(n.startswith("libc.so") for n in names)
    assert elf.needed(b"#!/bin/sh\n") == []


def fake_tree(root: Path) -> None:
    """A tree with the host's python (and its libraries) plus things nothing needs."""
    py = Path("/usr/bin/python3").resolve()
    for d in ("usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu"):
        (root / d).mkdir(parents=True)
    shutil.copy2(py, root / "usr/bin/python3")
    shutil.copy2("/usr/bin/ls", root / "usr/bin/ls")
    (root / "usr/bin/sh").symlink_to("ls")
    shutil.copy2("/usr/sbin/fsck.fat", root / "usr/sbin/fsck.fat")
    out = subprocess.run(["ldd", str(py), "/usr/bin/ls"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "=>" in line and "/" in line.split("=>")[1]:
            lib = Path(line.split("=>")[1].split()[0])
            shutil.copy2(lib, root / "usr/lib/x86_64-linux-gnu" / lib.name)
    (root / "usr/lib/x86_64-linux-gnu/libunused.so.1").write_bytes(b"\x7fELF junk")


def test_prune_keeps_what_runs_and_what_it_needs(tmp_path: Path) -> None:
    fake_tree(tmp_path)
    removed, freed = prune.prune(tmp_path)
    assert sorted(p.name for p in (tmp_path / "usr/bin").iterdir()) == ["python3"]
    assert (tmp_path / "usr/sbin/fsck.fat").exists()
    libs = {p.name for p in (tmp_path / "usr/lib/x86_64-linux-gnu").iterdir()}
    assert "libunused.so.1" not in libs and "libc.so.6" in libs
    assert removed >= 3 and freed > 0
    assert set(elf.needed((tmp_path / "usr/bin/python3").read_bytes())) <= libs | {"ld-linux-x86-64.so.2"}


def test_prune_keeps_the_libraries_of_the_cores_packages(tmp_path: Path) -> None:
    """A library the core loads with ctypes has no DT_NEEDED to it: its package's file list keeps it."""
    fake_tree(tmp_path)
    libdir = tmp_path / "usr/lib/x86_64-linux-gnu"
    shutil.copy2(libdir / "libc.so.6", libdir / "libwanted.so.1")  # an ELF library nothing links to
    (tmp_path / prune.PACKAGE_FILES).parent.mkdir(parents=True)
    (tmp_path / prune.PACKAGE_FILES).write_text("/.\n/usr\n/usr/lib/x86_64-linux-gnu/libwanted.so.1\n/usr/bin/ls\n")
    prune.prune(tmp_path)
    libs = {p.name for p in libdir.iterdir()}
    assert "libwanted.so.1" in libs and "libunused.so.1" not in libs
    assert not (tmp_path / "usr/bin/ls").exists()  # executables are still pruned


def test_cpio_parser_reads_what_cpio_writes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "usr/bin").mkdir(parents=True)
    (src / "init").write_text("#!/usr/bin/python3\n")
    (src / "usr/bin/python3").write_bytes(b"\x7fELF" + b"x" * 5000)
    (src / "usr/bin/python").symlink_to("python3")
    names = "\n".join([".", "init", "usr", "usr/bin", "usr/bin/python3", "usr/bin/python"]) + "\n"
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=names.encode(), cwd=src,
                             capture_output=True, check=True).stdout
    entries = {e.path: e for e in inspect.parse_cpio(archive + archive)}  # concatenated archives too
    assert entries["init"].data == b"#!/usr/bin/python3\n" and entries["init"].is_file
    assert entries["usr/bin/python3"].size == 5004
    assert entries["usr/bin/python"].is_symlink and entries["usr/bin/python"].link_target == "python3"
    zst = subprocess.run(["zstd", "-q", "-c"], input=archive, capture_output=True, check=True).stdout
    assert inspect.decompress(zst) == archive
