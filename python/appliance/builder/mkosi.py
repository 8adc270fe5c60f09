"""Run mkosi on the repository's configuration with the rendered trees."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from appliance.builder import kernel

# NETWORK=dhcp: the common wired NICs (paths under the kernel's module tree, as regexes),
# and the firmware Debian ships for them (r8169's; Intel's wired NICs need none).
NIC_FIRMWARE = ("firmware-realtek",)
NIC_MODULES = ("/net/virtio_net\\.", "/net/ethernet/intel/e1000/", "/net/ethernet/intel/e1000e/",
               "/net/ethernet/intel/igb/", "/net/ethernet/intel/igc/", "/net/ethernet/realtek/r8169\\.")


# The kernel's packages: Debian's kernel with the initramfs tool it depends on; or, for
# ours (given as a tree with its vmlinuz), depmod, which mkosi runs in the image.
DEBIAN_KERNEL = ("linux-image-amd64", "tiny-initramfs")
# Debian's kernel's command-line levers, each kept because `make bench --against` showed
# it wins (docs/bench.md, "The kernels"), none weakening the kernel: cryptomgr.notests
# skips the crypto API's self-tests of every algorithm as it registers (ours builds with
# CRYPTO_MANAGER_DISABLE_TESTS, as the defconfig does; fips=1 would run them regardless).
DEBIAN_KERNEL_ARGUMENTS = ("cryptomgr.notests",)
APPLIANCE_KERNEL = ("kmod",)


def mkosi_command(repo: Path, render_dir: Path, output_dir: Path, cache_dir: Path,
                  profile: str, *, extra_tree: Path | None = None, incremental: str = "incremental",
                  packages: list[str] | None = None, network: bool = False,
                  kernel_tree: Path | None = None) -> list[str]:
    """The mkosi command line for one build (pure, so it is tested). ``repo`` is the
    directory with mkosi.conf; ``extra_tree`` defaults to the rendered ``extra``;
    ``kernel_tree``, our own kernel's (KERNEL=appliance), else Debian's kernel package."""
    cmd = [
        "mkosi",
        f"--directory={repo}",
        f"--package-manager-tree={render_dir / 'pkgmngr'}:/",
        f"--extra-tree={extra_tree or render_dir / 'extra'}:/",
        f"--output-dir={output_dir}",
        f"--cache-dir={cache_dir / incremental}",
        f"--package-cache-dir={cache_dir / 'packages'}",
        # Keep the tree as it is after the packages and the prepare script, outside the
        # clone: a rebuild after a change to python/ or the core starts from there.
        "--incremental=yes",
    ]
    if kernel_tree is None:
        cmd += [f"--package={','.join(DEBIAN_KERNEL)}", f"--kernel-command-line={' '.join(DEBIAN_KERNEL_ARGUMENTS)}"]
    else:  # every driver built in: no modules to keep, for the NICs or otherwise
        cmd += [f"--extra-tree={kernel_tree}:/", f"--package={','.join(APPLIANCE_KERNEL)}",
                f"--kernel-command-line={kernel.FIRMWARE_ARGUMENT}"]
    if profile != "default":
        cmd.append(f"--profile={profile}")
    # NETWORK=dhcp: the common wired NICs' drivers (the init loads those whose device is
    # present) and their firmware (mkosi keeps the files those drivers name). Ours has
    # them built in, and its tree carries their firmware.
    if network and kernel_tree is None:
        cmd += [f"--kernel-modules-include={','.join(NIC_MODULES)}", f"--package={','.join(NIC_FIRMWARE)}"]
    if packages:  # the core's (build/packages.py); mkosi.postinst.chroot checks what they pulled in
        cmd += [f"--package={','.join(packages)}", f"--environment=APPLIANCE_PACKAGES={' '.join(packages)}"]
    cmd += ["--force", "build"]
    return cmd


# mkosi marks its steps with this; our own scripts say "packages:" (a refusal), "prune:" and "stdlib:".
STEP_MARK = "\u2023"
SHOWN = ("packages:", "prune:", "stdlib:")
TAIL = 25


def run_mkosi(cmd: list[str], log: Path | None = None, say: Callable[[str], None] | None = None) -> None:
    """Run mkosi. With ``log``, its whole output goes there and only its steps (and our
    scripts' refusals) are said, with the time since it started; a failure shows the
    log's tail and path. Without, its output is on our stderr."""
    sys.stderr.flush()
    if log is None:
        result = subprocess.run(cmd, stdout=sys.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"mkosi failed (exit {result.returncode}); its output is above. "
                               f"Command: {' '.join(cmd)}")
        return
    tell = say or (lambda line: print(line, file=sys.stderr, flush=True))
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL)
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                line = line.rstrip()
                tail.append(line)
                stripped = line.strip()
                if stripped.startswith(STEP_MARK) and not line.startswith(" "):
                    tell(f"build:   {time.monotonic() - started:6.1f} s  mkosi: {stripped[1:].strip()}")
                elif stripped.startswith(SHOWN):
                    tell(f"build:   {stripped}")
        code = proc.returncode
    if code != 0:
        for line in tail:
            tell(f"build: mkosi: {line}")
        raise RuntimeError(f"mkosi failed (exit {code}): the last lines are above; its whole output is {log}")
