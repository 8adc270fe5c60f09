"""The standard library as one zip archive (build/stdlibzip.py), with this host's python
standing in for the image's: modules import from the archive, tracebacks through them
show their source lines, and what must stay loose stays loose."""

from __future__ import annotations

import py_compile
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from appliance.builder import stdlibzip

TAG = sys.implementation.cache_tag
UNCHECKED = py_compile.PycInvalidationMode.UNCHECKED_HASH


def module(lib: Path, rel: str, text: str, mode: py_compile.PycInvalidationMode | None = UNCHECKED) -> Path:
    src = lib / rel
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(text)
    if mode is not None:
        py_compile.compile(str(src), cfile=str(src.parent / "__pycache__" / f"{src.stem}.{TAG}.pyc"),
                           dfile=str(src), invalidation_mode=mode, doraise=True)
    return src


def fake_stdlib(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    module(lib, "os.py", "LANDMARK = 1\n")
    module(lib, "fakejson/__init__.py", "from fakejson.decoder import loads\n")
    module(lib, "fakejson/decoder.py", "def loads(text):\n    if not text:\n"
                                       "        raise ValueError('empty document: ' + repr(text))\n    return text\n")
    module(lib, "stamped.py", "X = 1\n", mode=py_compile.PycInvalidationMode.TIMESTAMP)
    module(lib, "nobytecode.py", "X = 2\n", mode=None)
    module(lib, "venv/__init__.py", "SCRIPTS = 'scripts'\n")
    (lib / "venv/scripts").mkdir()
    (lib / "venv/scripts/activate").write_text("# data a module reads next to its __file__\n")
    (lib / "notes.txt").write_text("not Python\n")
    (lib / "lib-dynload").mkdir()
    (lib / "lib-dynload/_fake.so").write_bytes(b"\x7fELF")
    return lib


def test_modules_with_unchecked_bytecode_move_into_the_archive_and_the_rest_stays(tmp_path: Path) -> None:
    lib = fake_stdlib(tmp_path)
    archive = tmp_path / "std.zip"
    done = stdlibzip.zip_stdlib(lib, archive, cache_tag=TAG)
    names = set(zipfile.ZipFile(archive).namelist())
    assert names == {"fakejson/__init__.py", "fakejson/__init__.pyc", "fakejson/decoder.py", "fakejson/decoder.pyc"}
    kinds = {i.filename: i.compress_type for i in zipfile.ZipFile(archive).infolist()}
    assert kinds["fakejson/decoder.py"] == zipfile.ZIP_DEFLATED  # read by tracebacks only
    assert kinds["fakejson/decoder.pyc"] == zipfile.ZIP_STORED  # the initrd's zstd compresses it
    assert (done.modules, done.left_loose, done.files_removed) == (2, 2, 4)
    assert not (lib / "fakejson").exists()  # emptied, then removed
    for kept in ("os.py", "stamped.py", "nobytecode.py", "venv/__init__.py", "venv/scripts/activate",
                 "notes.txt", "lib-dynload/_fake.so", f"__pycache__/stamped.{TAG}.pyc"):
        assert (lib / kept).exists(), kept


def test_imports_come_from_the_archive_and_tracebacks_show_their_source(tmp_path: Path) -> None:
    lib = fake_stdlib(tmp_path)
    archive = tmp_path / "std.zip"
    stdlibzip.zip_stdlib(lib, archive, cache_tag=TAG)
    program = ("import sys, traceback\nsys.path.insert(0, sys.argv[1])\nimport fakejson\n"
               "print('from', fakejson.__spec__.loader.__class__.__name__, fakejson.__file__)\n"
               "try:\n    fakejson.loads('')\nexcept ValueError:\n    traceback.print_exc()\n    sys.exit(1)\n")
    r = subprocess.run([sys.executable, "-I", "-c", program, str(archive)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"from zipimporter {archive}/fakejson/__init__" in r.stdout
    # The frame inside the archive, with its line of source. The image's python (3.13) prints
    # an uncaught exception through the traceback module too (traceback._print_exception_bltin).
    assert "raise ValueError('empty document: ' + repr(text))" in r.stderr
    assert "ValueError: empty document: ''" in r.stderr


def test_the_archive_is_the_same_for_the_same_tree(tmp_path: Path) -> None:
    made = []
    for _ in range(2):
        shutil.rmtree(tmp_path / "lib", ignore_errors=True)
        stdlibzip.zip_stdlib(fake_stdlib(tmp_path), tmp_path / "std.zip", cache_tag=TAG)
        made.append((tmp_path / "std.zip").read_bytes())
    assert made[0] == made[1]


def test_the_build_says_what_it_zipped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    lib = fake_stdlib(tmp_path)
    (root / "usr/lib").mkdir(parents=True)
    lib.rename(root / stdlibzip.STDLIB)
    line = stdlibzip.zip_image_stdlib(root, cache_tag=TAG)
    assert line.startswith("stdlib: 2 modules (")
    assert f"in /{stdlibzip.ARCHIVE} (" in line
    assert line.endswith("; 2 left loose (no unchecked bytecode)")
    assert (root / stdlibzip.ARCHIVE).is_file()
