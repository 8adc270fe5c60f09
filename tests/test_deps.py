"""The core's Python dependencies (build/deps.py): what a core asks for, the pip command
for the image's Python, pip's failures said plainly, and an install from local wheels
(PIP_NO_INDEX: these tests reach no package index)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from appliance.builder import deps, inspect


def make_wheel(directory: Path, name: str, version: str, tag: str = "py3-none-any",
               files: dict[str, str] | None = None) -> Path:
    """A minimal wheel (what a build backend writes), by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    content = dict(files or {f"{name}/__init__.py": f"VERSION = {version!r}\n"})
    content[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    content[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"
    record = []
    for path, text in content.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    content[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in content.items():
            z.writestr(path, text)
    return wheel


def test_a_single_file_core_or_a_directory_without_requirements_asks_for_nothing(tmp_path: Path) -> None:
    (tmp_path / "core.py").write_text("print(1)\n")
    assert deps.wanted(tmp_path / "core.py") is None
    assert deps.wanted(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'c'\n")
    assert deps.wanted(tmp_path) is None


def test_requirements_txt_wins_and_hashes_turn_on_require_hashes(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\ndependencies = ['other']\n")
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    want = deps.wanted(tmp_path)
    assert want == deps.Wanted(tmp_path / "requirements.txt", (), False)
    (tmp_path / "requirements.txt").write_text("six==1.16.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    want = deps.wanted(tmp_path)
    assert want is not None and want.hashes
    assert "--require-hashes" in deps.pip_command(want, tmp_path / "t", tmp_path / "c")


def test_pyproject_dependencies(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'c'\ndependencies = ['six==1.16.0', 'attrs>=23']\n")
    want = deps.wanted(tmp_path)
    assert want is not None and want.requirements == ("six==1.16.0", "attrs>=23")
    assert deps.pip_command(want, tmp_path / "t", tmp_path / "c")[-3:] == ["--", "six==1.16.0", "attrs>=23"]
    (tmp_path / "pyproject.toml").write_text("[project\n")
    with pytest.raises(deps.DepsError, match="not valid TOML"):
        deps.wanted(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\ndependencies = 'six'\n")
    with pytest.raises(deps.DepsError, match="must be a list of strings"):
        deps.wanted(tmp_path)


def test_pip_is_asked_for_wheels_of_the_images_python_never_sources(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six\n")
    (tmp_path / "wheels").mkdir()
    want = deps.wanted(tmp_path)
    assert want is not None
    cmd = deps.pip_command(want, tmp_path / "t", tmp_path / "c")
    assert "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.13" and cmd[cmd.index("--implementation") + 1] == "cp"
    assert {"cp313", "abi3", "none"} == {cmd[i + 1] for i, a in enumerate(cmd) if a == "--abi"}
    tags = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert tags[0] == "manylinux_2_41_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert cmd[cmd.index("--find-links") + 1] == str(tmp_path / "wheels")
    assert cmd[-2:] == ["-r", str(tmp_path / "requirements.txt")]


def test_a_dependency_without_a_wheel_is_named_with_the_ways_out(tmp_path: Path) -> None:
    want = deps.Wanted(tmp_path / "requirements.txt", (), False)
    said = deps.explain("ERROR: Could not find a version that satisfies the requirement Foo_Bar==2.0 (from "
                        "versions: none)\nERROR: No matching distribution found for Foo_Bar==2.0\n", want)
    assert said.startswith("the core needs Foo_Bar==2.0, and there is no wheel of it for the image's Python "
                           "(CPython 3.13, x86-64, glibc 2.41 or older)")
    assert "python3-foo-bar" in said and str(tmp_path / "wheels") in said and "packages.txt" in said
    assert "every requirement" in deps.explain(
        "ERROR: In --require-hashes mode, all requirements must have their versions pinned with ==. "
        "Hashes are required in --require-hashes mode, but they are missing", want)
    assert deps.explain("ERROR: something new\n", want) == "pip failed: something new"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONSTRAINT", "")


def test_wheels_are_installed_where_the_images_python_finds_them(tmp_path: Path, offline: None) -> None:
    core = tmp_path / "core"
    core.mkdir()
    (core / "__main__.py").write_text("import tinydep\n")
    make_wheel(core / "wheels", "tinydep", "1.0")
    make_wheel(core / "wheels", "tinydep", "2.0", tag="cp311-cp311-manylinux_2_17_x86_64")  # the host's: not it
    (core / "requirements.txt").write_text("tinydep\n")
    extra = tmp_path / "extra"
    got = deps.install(core, extra, tmp_path / "cache", tmp_path / "logs/pip.log")
    assert got is not None and got.packages == [("tinydep", "1.0")] and got.size > 0
    assert (extra / deps.SITE_DIR / "tinydep/__init__.py").read_text() == "VERSION = '1.0'\n"  # .py kept
    assert "--only-binary=:all:" in (tmp_path / "logs/pip.log").read_text()


def test_a_wheel_only_for_another_python_is_refused_by_name(tmp_path: Path, offline: None) -> None:
    core = tmp_path / "core"
    core.mkdir()
    (core / "__main__.py").write_text("import fastthing\n")
    make_wheel(core / "wheels", "fastthing", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    (core / "requirements.txt").write_text("fastthing==1.0\n")
    with pytest.raises(deps.DepsError, match=r"the core needs fastthing==1\.0, and there is no wheel of it"):
        deps.install(core, tmp_path / "extra", tmp_path / "cache", tmp_path / "logs/pip.log")


def test_the_size_report_shows_what_the_dependencies_cost() -> None:
    report = inspect.SizeReport(uki=10 << 20, kernel=4 << 20, initrd_compressed=6 << 20, initrd_uncompressed=20 << 20,
                                cmdline="", top=[], dependencies=[("numpy", 3 << 20), ("six.py", 1 << 20)])
    assert "size: the core's Python dependencies: 4.00 MiB of it (uncompressed)" in report.summary()
    assert "size:      3.00 MiB  numpy" in report.full()
