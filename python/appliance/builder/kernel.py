"""``KERNEL=appliance``: a kernel of our own, built from Debian's source of the image's release.

The source is the ``linux-source-6.12`` package (Debian's patches applied: the lockdown
under Secure Boot among them), fetched through apt from the image's own sources. The
configuration is the x86-64 defconfig plus ``kernel/appliance.config``: every driver an
appliance needs built in, no modules. A build is kept in the cache outside the clone,
under the source package's version and a hash of the configuration's inputs: the next
build with the same inputs takes no time, and a security upload of the source (a new
version) builds anew. The first build takes about ``FIRST_BUILD_MINUTES`` minutes on two
cores; its progress is said as it goes, and a failure shows the log's tail and path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.builder import debfiles

SOURCE_PACKAGE = "linux-source-6.12"
BASE_CONFIG = "x86_64_defconfig"
FRAGMENT = "kernel/appliance.config"
KERNELS = ("debian", "appliance")
# Measured: the first build on two cores (kernel/appliance.config, linux-source-6.12 6.12.118-1).
FIRST_BUILD_MINUTES = 12
FILES_COMPILED = 2400  # the "CC" lines that build printed: the progress's 100 %
BUILD_ENV = {"KBUILD_BUILD_USER": "appliance", "KBUILD_BUILD_HOST": "appliance", "ARCH": "x86_64"}
# Bump when how the kernel is built changes, so that cached builds are not taken for it.
RECIPE = "1"
TAIL = 25
SAY_EVERY = 30.0


class KernelError(Exception):
    pass


@dataclass(frozen=True)
class Built:
    image: Path  # the bzImage
    release: str  # its uname -r, the name of its /usr/lib/modules directory
    version: str  # the source package's version
    key: str  # build_key: the source's version and the configuration's hash


def check_choice(kernel: str) -> None:
    if kernel not in KERNELS:
        raise KernelError(f"KERNEL={kernel!r}: choose KERNEL=debian (Debian's signed kernel and its modules, "
                          "the default) or KERNEL=appliance (our own, every driver built in)")


def wanted_options(fragment: str) -> dict[str, str]:
    """The options a fragment sets: CONFIG_X -> its value, "n" for ``# CONFIG_X is not set``."""
    wanted: dict[str, str] = {}
    for line in fragment.splitlines():
        line = line.strip()
        unset = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if unset:
            wanted[unset.group(1)] = "n"
        elif line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            wanted[name] = value
    return wanted


def config_mismatches(wanted: dict[str, str], config: str) -> list[str]:
    """Each option of ``wanted`` that ``config`` (a .config) does not have as asked."""
    got = wanted_options(config)
    return [f"{name}={value} (the kernel's configuration has {got.get(name, 'n')}: a dependency not met, "
            "or a name this version does not know)"
            for name, value in wanted.items() if got.get(name, "n") != value]


def build_key(version: str, fragment: str) -> str:
    digest = hashlib.sha256("\0".join([RECIPE, BASE_CONFIG, version, fragment]).encode()).hexdigest()
    return f"{version}-{digest[:12]}"


def build(repo: Path, sources_dir: Path, cache: Path, say: Callable[[str], None],
          jobs: int | None = None) -> Built:
    """The appliance kernel for the image's release: from the cache, or built now."""
    fragment_path = repo / FRAGMENT
    fragment = fragment_path.read_text()
    wanted = wanted_options(fragment)
    try:
        deb = debfiles.download(sources_dir, cache / "apt", [SOURCE_PACKAGE])[SOURCE_PACKAGE]
    except debfiles.DebError as e:
        raise KernelError(f"cannot fetch {SOURCE_PACKAGE}: {e}") from None
    version = debfiles.version_of(deb)
    key = build_key(version, fragment)
    done = cache / "builds" / key
    if (done / "bzImage").exists() and (done / "release").exists():
        say(f"kernel: {SOURCE_PACKAGE} {version}, built before ({done})")
        return Built(done / "bzImage", (done / "release").read_text().strip(), version, key)
    say(f"kernel: building {SOURCE_PACKAGE} {version} with {FRAGMENT}: the first build takes about "
        f"{FIRST_BUILD_MINUTES} minutes on two cores (this machine has {os.cpu_count()}); later builds come "
        "from the cache")
    src = unpack(deb, version, cache / "src", say)
    obj = cache / "obj"
    if obj.exists():
        shutil.rmtree(obj)
    obj.mkdir(parents=True)
    log = cache / "build.log"
    env = {**os.environ, **BUILD_ENV}
    make = ["make", "-C", str(src), f"O={obj}"]
    with log.open("w") as f:
        for step in ([*make, BASE_CONFIG],
                     [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj), str(obj / ".config"),
                      str(fragment_path.resolve())],
                     [*make, "olddefconfig"]):
            f.write("$ " + " ".join(step) + "\n")
            f.flush()
            if subprocess.run(step, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=obj,
                              stdin=subprocess.DEVNULL).returncode != 0:
                raise failed(log, f"configuring the kernel failed ({step[-1]})", say)
    wrong = config_mismatches(wanted, (obj / ".config").read_text())
    if wrong:
        raise KernelError(f"{FRAGMENT} asks for what {SOURCE_PACKAGE} {version} does not give: "
                          + "; ".join(wrong))
    started = time.monotonic()
    compiled = run_make([*make, f"-j{jobs or os.cpu_count() or 1}", "bzImage"], env, log, say, started)
    release = subprocess.run([*make, "-s", "kernelrelease"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
    tmp = done.with_name(done.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copy2(obj / "arch/x86/boot/bzImage", tmp / "bzImage")
    shutil.copy2(obj / ".config", tmp / "config")
    (tmp / "release").write_text(release + "\n")
    for old in (cache / "builds").iterdir():  # one build kept: the newest
        if old != tmp:
            shutil.rmtree(old)
    tmp.rename(done)
    shutil.rmtree(obj)
    size = (done / "bzImage").stat().st_size
    say(f"kernel: {release} built in {(time.monotonic() - started) / 60:.1f} min ({compiled} files compiled), "
        f"{size / 2**20:.1f} MiB: {done / 'bzImage'}")
    return Built(done / "bzImage", release, version, key)


def unpack(deb: Path, version: str, into: Path, say: Callable[[str], None]) -> Path:
    """The source tree of ``deb`` (its linux-source-*.tar.xz), unpacked once per version."""
    tree = into / version
    marker = tree / ".unpacked"
    if marker.exists():
        return tree / SOURCE_PACKAGE
    if into.exists():
        shutil.rmtree(into)  # another version's tree: 1.5 GB not to keep
    tree.mkdir(parents=True)
    say(f"kernel: unpacking {deb.name}")
    member = f"./usr/src/{SOURCE_PACKAGE}.tar.xz"
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as deb_tar, \
            subprocess.Popen(["tar", "-xO", member], stdin=deb_tar.stdout, stdout=subprocess.PIPE) as xz, \
            subprocess.Popen(["tar", "-xJ", "-C", str(tree)], stdin=xz.stdout) as untar:
        assert deb_tar.stdout is not None and xz.stdout is not None
        deb_tar.stdout.close()
        xz.stdout.close()
    if deb_tar.returncode or xz.returncode or untar.returncode:
        raise KernelError(f"cannot unpack {member} out of {deb}")
    if not (tree / SOURCE_PACKAGE / "Makefile").exists():
        raise KernelError(f"{deb} held no {SOURCE_PACKAGE}/ source tree")
    marker.touch()
    return tree / SOURCE_PACKAGE


def run_make(cmd: list[str], env: dict[str, str], log: Path, say: Callable[[str], None], started: float) -> int:
    """Run the build, its output into ``log``; progress every SAY_EVERY seconds. Returns the
    number of files compiled."""
    compiled = 0
    tail: deque[str] = deque(maxlen=TAIL)
    next_say = time.monotonic() + SAY_EVERY
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                              errors="replace", stdin=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                tail.append(line.rstrip())
                if line.startswith("  CC "):
                    compiled += 1
                if time.monotonic() >= next_say:
                    next_say = time.monotonic() + SAY_EVERY
                    share = min(99, 100 * compiled // FILES_COMPILED)
                    say(f"kernel: {(time.monotonic() - started) / 60:4.1f} min, {compiled} files compiled "
                        f"(about {share} %)")
    if proc.returncode != 0:
        raise failed(log, f"the kernel's build failed (exit {proc.returncode})", say, list(tail))
    return compiled


def failed(log: Path, what: str, say: Callable[[str], None], tail: list[str] | None = None) -> KernelError:
    for line in tail if tail is not None else log.read_text(errors="replace").splitlines()[-TAIL:]:
        say(f"kernel: {line}")
    return KernelError(f"{what}: the last lines are above; the whole log is {log}")


def image_tree(built: Built, into: Path, firmware: Path | None = None) -> Path:
    """An extra tree for mkosi with the kernel where it looks for one: mkosi makes the UKI
    of it (and RemoveFiles= takes it out of the image afterwards); with ``firmware`` (a
    folder), the NICs' firmware where FIRMWARE_PATH says (mkosi keeps no file under
    /usr/lib/firmware that no module names, and this kernel has no modules)."""
    if into.exists():
        shutil.rmtree(into)
    modules = into / "usr/lib/modules" / built.release
    modules.mkdir(parents=True)
    shutil.copy2(built.image, modules / "vmlinuz")
    if firmware is not None:
        shutil.copytree(firmware, into / FIRMWARE_PATH.lstrip("/"))
    return into


# NETWORK=dhcp: r8169's firmware, out of Debian's firmware-realtek (the rest of that
# package is Wi-Fi and Bluetooth firmware, for no driver of ours).
NIC_FIRMWARE = {"firmware-realtek": "./usr/lib/firmware/rtl_nic/"}
FIRMWARE_PATH = "/usr/lib/appliance/firmware"
FIRMWARE_ARGUMENT = f"firmware_class.path={FIRMWARE_PATH}"  # where the kernel looks first


def nic_firmware(sources_dir: Path, cache: Path) -> Path:
    """The NICs' firmware files of the image's release, unpacked under ``cache``/firmware."""
    try:
        debs = debfiles.download(sources_dir, cache / "apt", list(NIC_FIRMWARE))
    except debfiles.DebError as e:
        raise KernelError(f"cannot fetch the NICs' firmware: {e}") from None
    out = cache / "firmware"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for package, folder in NIC_FIRMWARE.items():
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[package])], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(out), "--strip-components=4", folder], input=tar.stdout,
                       check=True, capture_output=True)
    return out
