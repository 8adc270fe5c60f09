"""``python -m appliance.bench`` (``make bench``): ours against systemd, in one run.

Builds (when missing) our image and the comparator (bench/systemd/, systemd as PID 1),
both with bench/core.py as the core, then measures on this machine's QEMU and OVMF:
sizes, the warm rebuild after a change to the core (and, with --cold, builds from
empty caches), N boots of each (interleaved, so both see the same load), and our crash
turnaround. Prints a table and writes it as JSON (build/bench/bench.json).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.bench import figures
from appliance.builder import disk, inspect, mirror, mkosi, render, shim
from appliance.builder.__main__ import main as build_main
from appliance.esp import layout, uki
from appliance.harness import bugsink
from appliance.harness.machine import HarnessTimeout, Machine
from appliance.harness.qemu import kvm_works, user_network
from appliance.media import update
from appliance.media.espfs import EspImage

CORE = "bench/core.py"
COMPARATOR = "bench/systemd"


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# -- builds -------------------------------------------------------------------------------

def build_ours(repo: Path, out: Path, cache: Path, kernel: str = "debian") -> float:
    started = time.monotonic()
    if build_main(["image", "--repo", str(repo), "--build-dir", str(out), "--cache-dir", str(cache),
                   "--core", str(repo / CORE), "--kernel", kernel]) != 0:
        raise RuntimeError("building our image failed (its output is above)")
    return time.monotonic() - started


def build_comparator(repo: Path, out: Path, cache: Path) -> float:
    started = time.monotonic()
    mirrors = mirror.host_mirrors(os.environ.get("MIRROR") or None, os.environ.get("SECURITY_MIRROR") or None)
    render_dir = out / "render"
    render.render(render.Settings(repo=repo, core=repo / CORE, mirrors=mirrors), render_dir)
    core_tree = out / "core-tree"
    shutil.rmtree(core_tree, ignore_errors=True)
    (core_tree / "usr/lib/bench").mkdir(parents=True)
    shutil.copy2(repo / CORE, core_tree / "usr/lib/bench/core.py")
    (out / "mkosi").mkdir(parents=True, exist_ok=True)
    mkosi.run_mkosi(mkosi.mkosi_command(repo / COMPARATOR, render_dir, out / "mkosi", cache, "default",
                                        extra_tree=core_tree, incremental="bench-incremental"))
    efi = out / "comparator.efi"
    shutil.copy2(out / "mkosi/comparator.efi", efi)
    disk.make_disk(efi, out / "comparator.raw", free=disk.MIB)
    return time.monotonic() - started


def rebuild_after_touching(repo: Path, build: Callable[[Path, Path, Path], float], out: Path, cache: Path) -> float:
    (repo / CORE).touch()
    return build(repo, out, cache)


# -- boots --------------------------------------------------------------------------------

def boot_once(image: Path, work: Path, name: str, log_dir: Path, mok_cert: Path | None = None,
              display: str = "") -> figures.Boot:
    """One boot to the core's ready line; with ``mok_cert``, on a stock PC's firmware
    (Secure Boot on, Microsoft's keys) whose owner enrolled that certificate as a MOK;
    with ``display``, a monitor that the firmware and the init draw on."""
    m = Machine(image, work, name=name, log_dir=log_dir, secure_boot="ms" if mok_cert else "off",
                mok_cert=mok_cert, display=display)
    with m:
        match = m.expect(figures.READY, 300)
        seen = time.monotonic() - m.started_at
        m.power_cut()
    shutil.rmtree(work, ignore_errors=True)
    return figures.boot_from_line(match.group(0), seen)


def crash_turnaround(image: Path, work: Path, log_dir: Path) -> float:
    """Seconds from the core's crash to the next boot printing its traceback."""
    # The reboot as the machine does it: a warm reset (the harness's tests power-cycle instead).
    m = Machine(image, work, name="bench-crash", warm_reset=True, log_dir=log_dir)
    m.esp_write("/bench-crash", b"")
    with m:
        m.expect(r"bench core: crashing now", 300)
        crashed = time.monotonic()
        m.expect(r"init: \| core: RuntimeError: bench core: crash for the turnaround figure", 300)
        shown = time.monotonic()
        m.power_cut()
    shutil.rmtree(work, ignore_errors=True)
    return shown - crashed


def enrollable_cert(image: Path, out: Path) -> Path | None:
    """The certificate a SECURE_BOOT=shim image asks to be enrolled (PEM, for the harness),
    or None for an image laid out otherwise."""
    esp = EspImage(image)
    if not esp.exists("/" + shim.MOK_ENROLL_FILE):
        return None
    der = out.with_suffix(".cer")
    der.write_bytes(esp.read("/" + shim.MOK_ENROLL_FILE))
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(der), "-out", str(out)], check=True)
    return out


def rollback_turnaround(test_raw: Path, v2_efi: Path, work: Path, log_dir: Path) -> float:
    """Seconds from the first boot after a crash-looping update was staged to the previous
    image's core running again (3 failed tries and their back-offs, then the rollback),
    with the test images (make test-image): v2's core crashes at every boot."""
    v2 = uki.read_path(str(v2_efi)).identity.version
    m = Machine(test_raw, work, name="bench-rollback", log_dir=log_dir)
    m.esp_write(layout.TEST_VERSION_ACTION, f"{v2} raise".encode())
    out = io.StringIO()
    if update.update(str(m.disk), str(v2_efi), out=out) != 0:
        raise RuntimeError(f"staging {v2_efi} failed: {out.getvalue().strip()}")
    started = time.monotonic()  # the machine is powered on: its first boot tries the update
    with m:
        m.expect(rf"init: update to {re.escape(v2)} rolled back after 3 failed boots", 900)
        m.expect(r"matrix core: ready", 120)
        took = time.monotonic() - started
        m.power_cut()
    shutil.rmtree(work, ignore_errors=True)
    return took


def report_turnaround(test_net_raw: Path, tracker: bugsink.Bugsink, work: Path, log_dir: Path) -> tuple[float, float]:
    """(seconds from a core's crash to its event stored in a real Bugsink on the loopback,
    seconds from the next core's start to the reporter's "sent" line), with the test
    network image (make test-image)."""
    guest = "10.0.2.100:8080"
    m = Machine(test_net_raw, work, name="bench-reports", log_dir=log_dir,
                nic=user_network(relay={guest: tracker.port}))
    m.esp_write(layout.CRASH_REPORTS, f"dsn = {tracker.guest_dsn(guest)}\n".encode())
    m.esp_write(layout.TEST_ACTION, b"raise")
    before = len(tracker.crash_events())
    with m:
        m.expect(r"init: core ended: exited with status 1", 300)
        crashed = time.monotonic()
        m.expect(r"init: core started", 300)
        started = time.monotonic()
        m.expect(r"init: crash reports: sent \S+", 300)
        sent = time.monotonic()
        deadline = sent + 60
        while len(tracker.crash_events()) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = time.monotonic()
        m.power_cut()
    shutil.rmtree(work, ignore_errors=True)
    if len(tracker.crash_events()) == before:
        raise RuntimeError("the tracker stored no event within 60 s of the machine's sent line")
    return stored - crashed, sent - started


DATA_STEP = re.compile(r"init: boot steps: .*\bdata (\d+\.\d+) s")
CORE_STARTED = re.compile(r"init: core started: pid \d+ at (\d+\.\d+) s since boot")


def data_boots(test_raw: Path, work: Path, log_dir: Path) -> tuple[float, float, float, float]:
    """The test image on a 2 GiB disk: (the first boot's data step, seconds: the table, mkfs,
    the mount; its core's start, seconds since the kernel's; the same two at the next boot,
    whose data step is the check and the mount)."""
    m = Machine(test_raw, work, name="bench-data", log_dir=log_dir, disk_size=2 << 30)
    out: list[float] = []
    for _ in range(2):
        with m:
            out.append(float(m.expect(DATA_STEP, 300).group(1)))
            out.append(float(m.expect(CORE_STARTED, 60).group(1)))
            m.expect(r"matrix core: ready", 120)
            m.power_cut()
    shutil.rmtree(work, ignore_errors=True)
    return out[0], out[1], out[2], out[3]


def only_data(build: Path, runs: int) -> int:
    """``--only-data``: the data partition's first boot and its check at a normal boot."""
    test_raw = build / "test/appliance.raw"
    if not test_raw.exists():
        say("no test image: run `make test-image` first")
        return 2
    first, first_core, check, core = [], [], [], []
    with tempfile.TemporaryDirectory(dir=build) as work:
        for i in range(runs):
            a, b, c, d = data_boots(test_raw, Path(work) / f"data{i}", build / "bench/logs")
            first.append(a)
            first_core.append(b)
            check.append(c)
            core.append(d)
            say(f"data {i + 1}/{runs}: first boot's data step {a:.2f} s (core started at {b:.2f} s); "
                f"next boot's {c:.2f} s (core started at {d:.2f} s)")
    accel = "kvm" if kvm_works() else "tcg"
    print(f"first boot on a 2 GiB disk, the data step (table, mkfs.ext4, mount): {figures.spread(first).text()}; "
          f"the core started at {figures.spread(first_core).text()} since the kernel's start")
    print(f"a normal boot, the data step (e2fsck -p, mount): {figures.spread(check).text()}; the core started at "
          f"{figures.spread(core).text()} ({runs} runs, under {accel} on {os.cpu_count()} CPUs)")
    return 0


def report_package_bytes(efi: Path) -> int:
    """What crash reports add to the initrd: the reporter's package (uncompressed)."""
    return sum(e.size for e in inspect.initrd_entries(efi)
               if e.is_file and e.path.startswith("usr/lib/appliance/python/appliance/report/"))


def only_reports(build: Path, runs: int) -> int:
    """``--only-reports``: a core's crash to its event in a real tracker, ``runs`` times."""
    test_net = build / "test-net/appliance.raw"
    if not test_net.exists():
        say("no test network image: run `make test-image` first")
        return 2
    why = bugsink.available()
    if why:
        say(why)
        return 2
    with tempfile.TemporaryDirectory(dir=build) as work:
        tracker = bugsink.Bugsink(Path(work) / "bugsink").set_up()
        try:
            stored, sending = [], []
            for i in range(runs):
                a, b = report_turnaround(test_net, tracker, Path(work) / f"reports{i}", build / "bench/logs")
                stored.append(a)
                sending.append(b)
                say(f"crash report {i + 1}/{runs}: stored {a:.2f} s after the crash; sent {b:.2f} s after "
                    "the next core started")
        finally:
            tracker.stop()
    accel = "kvm" if kvm_works() else "tcg"
    print(f"a core's crash -> its event stored in Bugsink: {figures.spread(stored).text()} "
          f"(the reboot, the next boot, the reporter; {runs} runs, under {accel} on {os.cpu_count()} CPUs)")
    print(f"the next core's start -> the reporter's sent line: {figures.spread(sending).text()} "
          "(the reporter starts 2 s after the core: the core's start is not delayed)")
    print(f"the reporter's package in the initrd: {report_package_bytes(test_net.with_suffix('.efi')) / 1024:.1f} "
          "KiB uncompressed (standard library only: http.client, ssl, json were already in the image)")
    return 0


CHANNEL_PACKAGES = ("tuf", "securesystemslib", "requests", "urllib3", "idna", "charset_normalizer", "certifi")


def channel_package_bytes(efi: Path) -> dict[str, int]:
    """What the update channel adds to the initrd, uncompressed: python3-tuf and what it
    pulls in (Debian's dist-packages), and our checker."""
    out = dict.fromkeys((*CHANNEL_PACKAGES, "appliance.channel"), 0)
    for e in inspect.initrd_entries(efi):
        if not e.is_file:
            continue
        if e.path.startswith("usr/lib/appliance/python/appliance/channel/"):
            out["appliance.channel"] += e.size
        elif e.path.startswith("usr/lib/python3/dist-packages/"):
            top = e.path.split("/")[4].split("-")[0]
            if top in out:
                out[top] += e.size
    return out


def channel_turnaround(build: Path, work: Path, log_dir: Path, interval: int) -> tuple[float, float]:
    """net-1 running, checking every ``interval`` s (the ESP's override); net-2 published:
    (seconds until it is staged, until its core runs)."""
    from appliance.channel import publish
    root = work / "channel"
    root.mkdir(parents=True)
    handler = functools.partial(QuietFiles, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    keys = publish.Keys(build / "test-channel/keys")
    try:
        publish.publish(root, keys, build / "test-net/appliance.efi", say=lambda _: None)
        m = Machine(build / "test-net/appliance.raw", work / "m", name="bench-channel", log_dir=log_dir,
                    nic=user_network(relay={"10.0.2.102:8080": server.server_address[1]}))
        m.esp_write(layout.UPDATE_CHANNEL, f"url = http://10.0.2.102:8080/\ninterval = {interval}\n".encode())
        with m:
            m.wait_boot(timeout=120)
            m.expect(r"update channel: checked: nothing newer than net-1", 120)
            m.expect(r"update channel: next check in", 30)
            published = time.monotonic()
            publish.publish(root, keys, build / "test-net-v2/appliance.efi", say=lambda _: None)
            m.expect(r"update channel: staged net-2", 300)
            staged = time.monotonic() - published
            m.expect(r"matrix core: image net-2", 300)
            running = time.monotonic() - published
            m.power_cut()
    finally:
        server.shutdown()
        server.server_close()
    shutil.rmtree(work, ignore_errors=True)
    return staged, running


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def only_channel(build: Path, runs: int, interval: int = 20) -> int:
    """``--only-channel``: publication -> the machine runs the new version; the client's size."""
    if not all((build / d / "appliance.raw").exists() for d in ("test-net", "test-net-v2")):
        say("no test network images: run `make test-image` first")
        return 2
    staged, running = [], []
    with tempfile.TemporaryDirectory(dir=build) as work:
        for i in range(runs):
            a, b = channel_turnaround(build, Path(work) / f"channel{i}", build / "bench/logs", interval)
            staged.append(a)
            running.append(b)
            say(f"channel {i + 1}/{runs}: staged {a:.2f} s after the publication, running {b:.2f} s after it")
    accel = "kvm" if kvm_works() else "tcg"
    print(f"publication -> the new version staged: {figures.spread(staged).text()}; -> its core running: "
          f"{figures.spread(running).text()} (checks every {interval} s +-10%, a 29 MiB image over QEMU's user "
          f"network; {runs} runs, under {accel} on {os.cpu_count()} CPUs)")
    sizes = channel_package_bytes(build / "test-net/appliance.efi")
    print(f"the update channel in the initrd: {sum(sizes.values()) / 1024:.0f} KiB uncompressed ("
          + ", ".join(f"{k} {v / 1024:.0f}" for k, v in sizes.items()) + " KiB)")
    return 0


def only_rollback(build: Path, runs: int) -> int:
    """``--only-rollback``: the rollback row alone, measured ``runs`` times."""
    test_raw, v2_efi = build / "test/appliance.raw", build / "test-v2/appliance.efi"
    if not (test_raw.exists() and v2_efi.exists()):
        say("no test images: run `make test-image` first")
        return 2
    took = []
    with tempfile.TemporaryDirectory(dir=build) as work:
        for i in range(runs):
            took.append(rollback_turnaround(test_raw, v2_efi, Path(work) / f"rollback{i}", build / "bench/logs"))
            say(f"update rolled back {i + 1}/{runs}: previous core ready {took[-1]:.2f} s after the first try")
    print(f"crash-looping update staged -> previous core ready: {figures.spread(took).text()} "
          f"({runs} runs, under {'kvm' if kvm_works() else 'tcg'} on {os.cpu_count()} CPUs)")
    return 0


SCREEN_DISPLAY = "VGA"


def screen_rows(plain: list[figures.Boot], shown: list[figures.Boot]) -> list[tuple[str, str, str, str]]:
    """The screen's cost: the same image booted without a display and with one."""
    rows = []
    for label, milestones in (("firmware -> kernel start", ("kernel start",)),
                              ("init start -> core started", ("core started", "init start")),
                              ("core ready", ("core ready",))):
        def pick(boot: figures.Boot, names: tuple[str, ...] = milestones) -> float:
            return boot.milestone(names[0]) - (boot.milestone(names[1]) if len(names) > 1 else 0.0)
        a, b = figures.spread([pick(x) for x in plain]), figures.spread([pick(x) for x in shown])
        rows.append((label, a.text(), b.text(), f"{b.median - a.median:+.2f} s"))
    return rows


def only_screen(build: Path, runs: int) -> int:
    """``--only-screen``: the bench image booted without a display and with one, interleaved."""
    ours = build / "bench/ours/appliance.raw"
    if not ours.exists():
        say(f"no {ours}: run `make bench` once (it builds it), then --only-screen")
        return 2
    boots: dict[str, list[figures.Boot]] = {"": [], SCREEN_DISPLAY: []}
    with tempfile.TemporaryDirectory(dir=build) as work:
        for i in range(runs):
            for display in boots:
                b = boot_once(ours, Path(work) / f"screen{i}{display}", f"bench-screen-{display or 'none'}-{i + 1}",
                              build / "bench/logs", display=display)
                say(f"boot {i + 1}/{runs} with {display or 'no display'}: core ready at {b.core_ready:.2f} s "
                    f"(kernel {b.kernel_start:.2f}, init {b.init_start:.2f}, core {b.core_started:.2f})")
                boots[display].append(b)
    print(figures.table([("", "no display", SCREEN_DISPLAY, "the screen's cost"),
                         *screen_rows(boots[""], boots[SCREEN_DISPLAY])]))
    print(f"\n{runs} boots of each, interleaved, under {'kvm' if kvm_works() else 'tcg'} on {os.cpu_count()} CPUs.")
    return 0


def only_against(build: Path, other: Path, runs: int) -> int:
    """``--against OTHER.raw``: our bench image and another image of the bench core (one
    built from an earlier commit, say), booted interleaved ``runs`` times each; sizes and
    the boot rows, this image against the other. For one change's effect on the boot."""
    ours = build / "bench/ours/appliance.raw"
    if not ours.exists():
        say(f"no {ours}: run `make bench` once (it builds it), then --against")
        return 2
    rows: list[tuple[str, str, str, str]] = [("", "this image", other.name, "this/other")]
    rows += size_rows(sizes(ours.with_suffix(".efi"), ours), sizes(other.with_suffix(".efi"), other),
                      ("uki", "initrd", "initrd_uncompressed"))
    boots: dict[str, list[figures.Boot]] = {"ours": [], "other": []}
    with tempfile.TemporaryDirectory(dir=build) as work:
        for i in range(runs):
            for name, image in (("ours", ours), ("other", other)):
                boot = boot_once(image, Path(work) / f"{name}{i}", f"bench-against-{name}-{i + 1}",
                                 build / "bench/logs")
                say(f"{name} boot {i + 1}/{runs}: kernel start -> /init {boot.kernel_part:.2f} s, "
                    f"core ready at {boot.core_ready:.2f} s")
                boots[name].append(boot)
    rows += figures.boot_rows(boots["ours"], boots["other"])
    print(figures.table(rows))
    print(f"\n{runs} boots of each, interleaved, under {'kvm' if kvm_works() else 'tcg'} on {os.cpu_count()} CPUs.")
    return 0


KERNEL_TARGETS = {"kernel start -> /init": 0.4, "QEMU start -> core ready": 1.7}  # x the firmware's time
UKI_TARGET = 20 * 2**20


def kernel_rows(boots: dict[str, list[figures.Boot]], ukis: dict[str, int]) -> list[tuple[str, str, str, str]]:
    """Debian's kernel against ours (KERNEL=appliance), each boot's figures as multiples of
    that boot's firmware time (QEMU start -> kernel start), as the targets are."""
    debian, ours = boots["debian"], boots["appliance"]
    rows = [("", "Debian's kernel", "KERNEL=appliance", "target")]
    a, b = figures.spread([x.kernel_start for x in debian]), figures.spread([x.kernel_start for x in ours])
    rows.append(("the firmware: QEMU start -> kernel start", a.text(), b.text(), ""))
    picks: tuple[tuple[str, Callable[[figures.Boot], float]], ...] = (
        ("kernel start -> /init", lambda x: x.kernel_part), ("QEMU start -> core ready", lambda x: x.core_ready))
    for label, figure in picks:
        cells = []
        for runs in (debian, ours):
            seconds = figures.spread([figure(x) for x in runs])
            times = figures.spread([figure(x) / x.kernel_start for x in runs])
            cells.append(f"{seconds.median:.2f} s = {times.median:.2f} x ({times.low:.2f}-{times.high:.2f})")
        rows.append((label, cells[0], cells[1], f"<= {KERNEL_TARGETS[label]} x"))
    rows.append(("UKI", figures.mib(ukis["debian"]), figures.mib(ukis["appliance"]),
                 f"<= {figures.mib(UKI_TARGET)}"))
    return rows


def only_kernels(repo: Path, build: Path, cache: Path, runs: int) -> int:
    """``--only-kernels``: the bench core's image with Debian's kernel and with ours, booted
    interleaved ``runs`` times each (both built first when missing)."""
    images = {"debian": build / "bench/ours", "appliance": build / "bench/ours-kernel"}
    for kernel, out in images.items():
        if not (out / "appliance.raw").exists():
            say(f"building the bench image with KERNEL={kernel} (missing)")
            build_ours(repo, out, cache, kernel=kernel)
    boots: dict[str, list[figures.Boot]] = {k: [] for k in images}
    with tempfile.TemporaryDirectory(dir=build) as work:
        for i in range(runs):
            for kernel, out in images.items():
                b = boot_once(out / "appliance.raw", Path(work) / f"{kernel}{i}", f"bench-kernel-{kernel}-{i + 1}",
                              build / "bench/logs")
                say(f"KERNEL={kernel} boot {i + 1}/{runs}: firmware {b.kernel_start:.2f} s, kernel start -> /init "
                    f"{b.kernel_part:.2f} s, core ready at {b.core_ready:.2f} s")
                boots[kernel].append(b)
    print(figures.table(kernel_rows(boots, {k: (out / "appliance.efi").stat().st_size
                                            for k, out in images.items()})))
    print(f"\n{runs} boots of each, interleaved, under {'kvm' if kvm_works() else 'tcg'} on {os.cpu_count()} CPUs; "
          "x: that boot's figure over its firmware's time (medians, min-max).")
    return 0


# -- the report ---------------------------------------------------------------------------

def sizes(efi: Path, raw: Path) -> dict[str, int]:
    report = inspect.size_report(efi)
    return {"uki": efi.stat().st_size, "kernel": report.kernel, "initrd": report.initrd_compressed,
            "initrd_uncompressed": report.initrd_uncompressed, "disk_image": raw.stat().st_size,
            "disk_image_allocated": raw.stat().st_blocks * 512}


SIZE_LABELS = {"uki": "UKI", "kernel": "  kernel", "initrd": "  initrd (compressed)",
               "initrd_uncompressed": "  initrd (uncompressed)", "disk_image": "disk image",
               "disk_image_allocated": "  blocks used (what bmaptool writes)"}


def size_rows(ours: dict[str, int], theirs: dict[str, int],
              keys: Sequence[str] = tuple(SIZE_LABELS)) -> list[tuple[str, str, str, str]]:
    """The table's rows for the sizes ``keys`` of two images (as ``sizes`` gives them)."""
    return [(SIZE_LABELS[key], figures.mib(ours[key]), figures.mib(theirs[key]),
             f"{ours[key] / theirs[key]:.2f}" if theirs[key] else "n/a") for key in keys]


def report(result: dict[str, Any]) -> str:
    ours, theirs = result["ours"], result["systemd"]
    rows: list[tuple[str, str, str, str]] = [("", "ours", "systemd", "ours/systemd")]
    rows += size_rows(ours["size"], theirs["size"])
    for key, label in (("cold", "build from empty caches"), ("warm", "rebuild after a change to the core")):
        a, b = ours["build"].get(key), theirs["build"].get(key)
        rows.append((label, f"{a:.1f} s" if a is not None else "skipped", f"{b:.1f} s" if b is not None else "skipped",
                     f"{a / b:.2f}" if a and b else "n/a"))
    boots_a = [figures.Boot(*b) for b in ours["boots"]]
    boots_b = [figures.Boot(*b) for b in theirs["boots"]]
    rows += figures.boot_rows(boots_a, boots_b)
    turn = figures.spread(ours["crash_turnaround"])
    rows.append(("crash -> dump printed by the next boot", turn.text(), "n/a: nothing kept", ""))
    if ours.get("rollback") is not None:
        rows.append(("crash-looping update staged -> previous core ready", f"{ours['rollback']:.2f} s",
                     "n/a: no updates", ""))
    if ours.get("data") is not None:
        first, first_core, check, _ = ours["data"]
        rows.append(("first boot on a 2 GiB disk: data step (table, mkfs)", f"{first:.2f} s", "n/a: no data", ""))
        rows.append(("  its core started (since the kernel)", f"{first_core:.2f} s", "", ""))
        rows.append(("normal boot: data step (e2fsck -p, mount)", f"{check:.2f} s", "", ""))
    if ours.get("crash_report") is not None:
        stored, sending = ours["crash_report"]
        rows.append(("crash -> its event stored in a tracker (Bugsink)", f"{stored:.2f} s", "n/a: no reports", ""))
        rows.append(("  next core started -> report sent", f"{sending:.2f} s", "", ""))
        rows.append(("  the reporter in the initrd", f"{ours['report_package'] / 1024:.1f} KiB", "", ""))
    if ours.get("channel") is not None:
        staged, running = ours["channel"]
        rows.append(("publication -> new version staged (checks every 20 s)", f"{staged:.2f} s",
                     "n/a: no channel", ""))
        rows.append(("  -> its core running", f"{running:.2f} s", "", ""))
        rows.append(("  the TUF client and the checker in the initrd", f"{ours['channel_package'] / 1024:.0f} KiB",
                     "", ""))
    text = figures.table(rows)
    if ours.get("secure_boot_boots"):
        on = [figures.Boot(*b) for b in ours["secure_boot_boots"]]
        text += "\n\n" + figures.table(figures.secure_boot_rows(on, boots_a))
    if ours.get("screen_boots"):
        shown = [figures.Boot(*b) for b in ours["screen_boots"]]
        text += "\n\n" + figures.table([("", "no display", SCREEN_DISPLAY, "the screen's cost"),
                                         *screen_rows(boots_a, shown)])
    if ours.get("kernel_boots"):
        own = [figures.Boot(*b) for b in ours["kernel_boots"]]
        text += "\n\n" + figures.table(kernel_rows({"debian": boots_a, "appliance": own},
                                                    {"debian": ours["size"]["uki"], "appliance": ours["kernel_uki"]}))
    ready = figures.spread([b.core_ready for b in boots_a])
    notes = [
        f"{len(boots_a)} boots of each, interleaved, under {result['accel']} on {result['cpus']} CPUs; "
        "figures are median (min-max), seconds since QEMU started.",
        "kernel start = the firmware handing over (OVMF's time, and the UKI stub's few ms).",
        f"targets: core ready <= 8 s (ours {ready.median:.2f} s); ours/systemd <= 0.6 for core ready; "
        f"crash turnaround <= 2 x boot + 2 s (= {2 * ready.median + 2:.1f} s); init start -> core started <= 1 s.",
    ]
    if ours["build"].get("cold") is None:
        notes.append("cold builds skipped: `make bench BENCH_COLD=1` measures them (downloads every package twice).")
    return text + "\n\n" + "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=".")
    p.add_argument("--build-dir", default="build")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/appliance-image"))
    p.add_argument("--boots", type=int, default=int(os.environ.get("BENCH_BOOTS") or 5))
    p.add_argument("--crash-runs", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="also build both from empty caches (slow)")
    p.add_argument("--no-rebuild", action="store_true", help="skip the warm rebuilds (measure boots only)")
    p.add_argument("--only-rollback", action="store_true",
                   help="only the update rollback row, --boots times, with the test images (make test-image)")
    p.add_argument("--only-reports", action="store_true",
                   help="only the crash report rows, --boots times, with the test network image (make test-image)")
    p.add_argument("--only-data", action="store_true",
                   help="only the data partition rows, --boots times, with the test image (make test-image)")
    p.add_argument("--only-channel", action="store_true",
                   help="only the update channel rows, --boots times, with the test network images (make test-image)")
    p.add_argument("--only-screen", action="store_true",
                   help="only the screen's cost: the bench image without a display and with one, --boots times")
    p.add_argument("--only-kernels", action="store_true",
                   help="only the kernels' rows: the bench image with Debian's kernel and with KERNEL=appliance, "
                        "--boots times each")
    p.add_argument("--against", metavar="OTHER.raw", type=Path,
                   help="only boots: our bench image against another image of the bench core, interleaved "
                        "(with OTHER.efi beside it for the sizes)")
    args = p.parse_args(argv)
    if args.against:
        return only_against(Path(args.build_dir).resolve(), args.against.resolve(), args.boots)
    if args.only_rollback:
        return only_rollback(Path(args.build_dir).resolve(), args.boots)
    if args.only_reports:
        return only_reports(Path(args.build_dir).resolve(), args.boots)
    if args.only_data:
        return only_data(Path(args.build_dir).resolve(), args.boots)
    if args.only_channel:
        return only_channel(Path(args.build_dir).resolve(), args.boots)
    if args.only_screen:
        return only_screen(Path(args.build_dir).resolve(), args.boots)
    if args.only_kernels:
        return only_kernels(Path(args.repo).resolve(), Path(args.build_dir).resolve(),
                            Path(args.cache_dir).resolve(), args.boots)
    repo = Path(args.repo).resolve()
    bench = Path(args.build_dir).resolve() / "bench"
    cache = Path(args.cache_dir).resolve()
    ours_dir, theirs_dir = bench / "ours", bench / "systemd"
    bench.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"accel": "", "cpus": os.cpu_count(), "ours": {"build": {}}, "systemd": {"build": {}}}
    try:
        if args.cold:
            with tempfile.TemporaryDirectory(dir=bench.parent) as empty:
                say("cold builds: both images from empty caches")
                result["ours"]["build"]["cold"] = build_ours(repo, ours_dir, Path(empty) / "ours")
                result["systemd"]["build"]["cold"] = build_comparator(repo, theirs_dir, Path(empty) / "systemd")
        for name, out, build in (("ours", ours_dir, build_ours), ("systemd", theirs_dir, build_comparator)):
            image = out / ("appliance.raw" if name == "ours" else "comparator.raw")
            if not image.exists():
                say(f"building {name} (missing)")
                build(repo, out, cache)
            if not args.no_rebuild:
                say(f"timing {name}'s rebuild after touching {CORE}")
                result[name]["build"]["warm"] = rebuild_after_touching(repo, build, out, cache)
        kernel_dir = bench / "ours-kernel"  # the same image with KERNEL=appliance
        if not (kernel_dir / "appliance.raw").exists():
            say("building ours with KERNEL=appliance (missing)")
            build_ours(repo, kernel_dir, cache, kernel="appliance")
        result["ours"]["kernel_uki"] = (kernel_dir / "appliance.efi").stat().st_size
        ours_raw, theirs_raw = ours_dir / "appliance.raw", theirs_dir / "comparator.raw"
        result["ours"]["size"] = sizes(ours_dir / "appliance.efi", ours_raw)
        result["systemd"]["size"] = sizes(theirs_dir / "comparator.efi", theirs_raw)
        logs = bench / "logs"
        boots: dict[str, list[list[float]]] = {"ours": [], "systemd": [], "ours-secure-boot": [], "ours-screen": [],
                                               "ours-kernel": []}
        with tempfile.TemporaryDirectory(dir=bench) as work:
            cert = enrollable_cert(ours_raw, Path(work) / "mok.pem")
            if cert is None:
                say("our image is not laid out for a stock PC (SECURE_BOOT=shim): no Secure Boot boots")
            runs: list[tuple[str, Path, Path | None]] = [("ours", ours_raw, None), ("systemd", theirs_raw, None),
                                                         ("ours-screen", ours_raw, None),
                                                         ("ours-kernel", kernel_dir / "appliance.raw", None)]
            runs += [("ours-secure-boot", ours_raw, cert)] if cert else []
            for i in range(args.boots):
                for name, image, mok in runs:
                    b = boot_once(image, Path(work) / f"{name}{i}", f"bench-{name}-{i + 1}", logs, mok,
                                  display=SCREEN_DISPLAY if name == "ours-screen" else "")
                    say(f"{name} boot {i + 1}/{args.boots}: core ready at {b.core_ready:.2f} s "
                        f"(kernel {b.kernel_start:.2f}, init {b.init_start:.2f}, core {b.core_started:.2f})")
                    boots[name].append(list(b))
            turnaround = []
            for i in range(args.crash_runs):
                turnaround.append(crash_turnaround(ours_raw, Path(work) / f"crash{i}", logs))
                say(f"crash turnaround {i + 1}/{args.crash_runs}: {turnaround[-1]:.2f} s")
        result["ours"]["boots"], result["systemd"]["boots"] = boots["ours"], boots["systemd"]
        result["ours"]["secure_boot_boots"] = boots["ours-secure-boot"]
        result["ours"]["screen_boots"] = boots["ours-screen"]
        result["ours"]["kernel_boots"] = boots["ours-kernel"]
        result["ours"]["crash_turnaround"] = turnaround
        test_raw, v2_efi = bench.parent / "test/appliance.raw", bench.parent / "test-v2/appliance.efi"
        if test_raw.exists():
            with tempfile.TemporaryDirectory(dir=bench) as work:
                result["ours"]["data"] = data_boots(test_raw, Path(work) / "data", logs)
            say(f"data partition: first boot's step {result['ours']['data'][0]:.2f} s, a normal boot's "
                f"{result['ours']['data'][2]:.2f} s")
        if test_raw.exists() and v2_efi.exists():
            with tempfile.TemporaryDirectory(dir=bench) as work:
                result["ours"]["rollback"] = rollback_turnaround(test_raw, v2_efi, Path(work) / "rollback", logs)
            say(f"update rolled back: previous core ready {result['ours']['rollback']:.2f} s after the first try")
        else:
            say("no test images (make test-image): the update rollback figure is skipped")
        test_net = bench.parent / "test-net/appliance.raw"
        why = bugsink.available() or ("" if test_net.exists() else "no test network image (make test-image)")
        if why:
            say(f"{why}: the crash report figure is skipped")
        else:
            with tempfile.TemporaryDirectory(dir=bench) as work:
                tracker = bugsink.Bugsink(Path(work) / "bugsink").set_up()
                try:
                    result["ours"]["crash_report"] = report_turnaround(test_net, tracker, Path(work) / "reports", logs)
                finally:
                    tracker.stop()
            result["ours"]["report_package"] = report_package_bytes(test_net.with_suffix(".efi"))
            say(f"crash report: stored {result['ours']['crash_report'][0]:.2f} s after the crash")
        if all((bench.parent / d / "appliance.raw").exists() for d in ("test-net", "test-net-v2")):
            with tempfile.TemporaryDirectory(dir=bench) as work:
                result["ours"]["channel"] = channel_turnaround(bench.parent, Path(work) / "channel", logs, 20)
            result["ours"]["channel_package"] = sum(channel_package_bytes(
                bench.parent / "test-net/appliance.efi").values())
            say(f"update channel: the new version running {result['ours']['channel'][1]:.2f} s after publication")
        else:
            say("no test network images (make test-image): the update channel figure is skipped")
        result["accel"] = "kvm" if kvm_works() else "tcg"
    except (RuntimeError, HarnessTimeout, OSError) as e:
        say(f"failed: {e}")
        return 1
    text = report(result)
    out_json = bench / "bench.json"
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    (bench / "bench.txt").write_text(text + "\n")
    print(text)
    print(f"\n(also {out_json} and {bench / 'bench.txt'}; console logs in {bench / 'logs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
