"""``make soak``: power cuts at random moments of many boots, and the ESP checked after each.

The test image's core floods stderr, then crashes or asks for a restart at random
(``soak`` action), so boots write the runtime log, archive it, rotate the history and
move the back-off counter. Each cycle boots the machine, waits until its core runs
(after every cut, the next boot must reach the core), then cuts the power at a random
moment: during the core's life and end, or during the next boot's archiving, rotation
and FAT check. Between cycles the ESP is read off the disk image and checked:

- ``fsck.fat -n`` finds nothing but the dirty flag, the free-cluster hint and, with the
  dirty flag set, clusters no file owns (a cut between a file's FAT entries and its
  directory entry), which the init's check at the next boot must then repair;
- every history record is whole (length and checksum), or the init says it is torn at
  the next boot;
- no record that was whole before the cut is gone, unless rotation took it (the
  history then holds its bound of newer records);
- the back-off counter is readable and no larger than the boots so far.

Figures go to ``build/soak/soak.json`` after every cut; a later run resumes from them
on the same disks, so a long soak can span several runs. SIGINT or SIGTERM (Ctrl-C)
ends a run after the cycles under way, with the figures printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.esp import backoff, layout, records
from appliance.harness.machine import HarnessTimeout, Machine
from appliance.media.espfs import EspError, fsck_findings

CORE_STARTED = r"init: core started: pid \d+ at"
# Where the cuts land: after the core started, within --window seconds (its stderr
# flood, its end, the back-off counter, the reboot); or, for LATE_SHARE of the cuts, in
# the first NEXT_BOOT_WINDOW seconds of the next boot's init (fsck, archiving, rotation).
LATE_SHARE = 0.4
NEXT_BOOT_WINDOW = 2.5
FAT_CHECKED = "was not unmounted cleanly: checking it"


@dataclass
class Figures:
    cuts: int = 0
    boots: int = 0
    boots_reaching_the_core: int = 0
    records_checked: int = 0
    torn_records_reported: int = 0  # by the init, on its console
    torn_records_found: int = 0  # by the host, off the disk
    records_lost: int = 0
    fsck_repairs: int = 0  # boots whose init found the FAT dirty and ran fsck.fat -a
    lost_clusters: int = 0  # clusters no file owned after a cut, left for the init's check
    salvaged_files: int = 0  # FSCKnnnn.REC files those checks left (in the root or kept by the init), now
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def lost_records(before: dict[str, str], after: dict[str, str], bound: int) -> list[str]:
    """Records (name -> sha256) whole before a cut and gone after it, other than by rotation:
    a record may go only when the history holds ``bound`` records all newer than it."""
    newer = sorted(after)
    lost = []
    for name in sorted(set(before) - set(after)):
        rotated = len(newer) >= bound and all(n > name for n in newer)
        if not rotated:
            lost.append(name)
    lost += [name for name in set(before) & set(after) if before[name] != after[name]]
    return lost


def check_backoff(data: bytes | None, boots: int) -> str:
    """A problem with the back-off counter, or ""."""
    if data is None:
        return ""
    try:
        n = backoff.parse(data)
    except ValueError as e:
        return f"back-off counter unreadable: {e}"
    return f"back-off counter {n} is more than the {boots} boots so far" if n > boots else ""


def check_repair(due: bool, console: str) -> str:
    """A problem if clusters were lost at the last cut and the init's next boot did not check the FAT."""
    if due and FAT_CHECKED not in console:
        return "clusters lost at the last cut were not checked by the init at the next boot"
    return ""


def salvaged_files(m: Machine) -> int:
    """The FSCKnnnn.REC files the init's FAT checks have left: in the ESP's root until the
    next boot moves them, then among the newest few it keeps (layout.SALVAGED_DIR)."""
    return sum(1 for n in m.esp_list("/") if layout.salvaged_name(n)) + len(m.esp_list(layout.SALVAGED_DIR))


class Soak:
    def __init__(self, image: Path, out: Path, target: int, machines: int, window: float, seed: int | None) -> None:
        self.image = image
        self.out = out
        self.target = target
        self.machines = machines
        self.window = window
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.path = out / "soak.json"
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.figures = Figures(**saved.get("figures", {}))
        self.history_bound = int(saved.get("history_bound", 4))
        self.seen: dict[str, dict[str, str]] = saved.get("records", {})  # machine -> whole records before the cut
        self.torn: dict[str, list[str]] = saved.get("torn", {})  # machine -> torn records after the last cut
        self.repair_due: dict[str, bool] = saved.get("repair_due", {})  # machine -> lost clusters after the last cut
        self._already = self.figures.seconds  # earlier runs'
        self._started = 0.0
        self.salvaged: dict[str, int] = {}  # machine -> salvaged_files on its disk now
        self.stop = threading.Event()  # SIGINT/SIGTERM: finish the cycles under way, then report

    def save(self) -> None:
        if self._started:
            self.figures.seconds = self._already + time.monotonic() - self._started
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"figures": asdict(self.figures), "history_bound": self.history_bound,
                                   "records": self.seen, "torn": self.torn, "repair_due": self.repair_due},
                                  indent=1))
        os.replace(tmp, self.path)

    def fail(self, what: str) -> None:
        with self.lock:
            self.figures.failures.append(what)
            self.save()
        print(f"soak: FAILED: {what}", file=sys.stderr, flush=True)

    def done(self) -> bool:
        with self.lock:
            return self.figures.cuts >= self.target or bool(self.figures.failures) or self.stop.is_set()

    def cycle(self, m: Machine, name: str) -> None:
        with self.lock:
            late = self.rng.random() < LATE_SHARE
            wait = self.rng.uniform(0, self.window)
        with m:
            m.wait_boot(timeout=180)
            m.expect(CORE_STARTED, 120)  # every boot after a cut reaches the core
            if late:  # in the next boot's archiving, rotation and FAT check, before its core
                m.wait_boot(timeout=180)
                wait *= NEXT_BOOT_WINDOW / self.window
            m.watch(wait)
            m.power_cut()
        log = m.output_since_start()
        text, self._offsets[name] = log[self._offsets.get(name, 0):], len(log)  # this cycle's console
        fsck = fsck_findings(m.disk)
        problems = [f"fsck.fat -n: {p}" for p in fsck.problems]
        salvaged = salvaged_files(m)
        whole: dict[str, str] = {}
        torn: list[str] = []
        for rec_name in m.esp_list(layout.HISTORY_DIR):
            if rec_name.endswith(".rec"):
                rec = records.decode(m.esp_read(f"{layout.HISTORY_DIR}/{rec_name}"))
                if rec.ok:
                    whole[rec_name] = records.sha256(rec.payload)
                else:
                    torn.append(rec_name)
        try:
            counter: bytes | None = m.esp_read(layout.BACKOFF)
        except EspError:
            counter = None  # not written yet
        with self.lock:
            f = self.figures
            f.cuts += 1
            f.boots += text.count("init: appliance init ")
            f.boots_reaching_the_core += text.count("init: core started:")
            f.records_checked += len(whole) + len(torn)
            f.torn_records_found += len(torn)
            f.torn_records_reported += text.count(": torn record: ") + text.count(": corrupt record: ")
            f.fsck_repairs += text.count(FAT_CHECKED)
            lost = lost_records(self.seen.get(name, {}), whole, self.history_bound)
            f.records_lost += len(lost)
            problems += [f"record lost: {n}" for n in lost]
            # A torn record found after the last cut must be said by the init at the boot after it.
            unreported = [n for n in self.torn.get(name, []) if n in torn and f"{n}: " not in text]
            problems += [f"torn record {n} not reported by the init" for n in unreported]
            self.torn[name] = torn
            problem = check_repair(self.repair_due.get(name, False), text)
            if problem:
                problems.append(problem)
            self.repair_due[name] = fsck.lost_clusters > 0
            f.lost_clusters += fsck.lost_clusters
            self.salvaged[name] = salvaged
            f.salvaged_files = sum(self.salvaged.values())
            problem = check_backoff(counter, f.boots)
            if problem:
                problems.append(problem)
            self.seen[name] = whole
            self.save()
            cuts = f.cuts
        for p in problems:
            self.fail(f"{name}, cut {cuts}: {p} (console: {m.log_path})")
        if cuts % 10 == 0:
            print(f"soak: {cuts} cuts, {self.figures.boots} boots, {self.figures.records_checked} records checked",
                  flush=True)

    def worker(self, index: int) -> None:
        name = f"m{index}"
        fresh = not (self.out / name / "disk.raw").exists()
        m = Machine(self.image, self.out / name, name=f"soak-{name}", log_dir=self.out / "logs", resume=True)
        salvaged = salvaged_files(m)  # a resumed run counts both disks from its first cut
        with self.lock:
            if fresh:
                self.seen[name] = {}  # a new disk: nothing on it was seen before
            self.salvaged[name] = salvaged
        m.esp_write(layout.TEST_ALWAYS, b"soak")
        while not self.done():
            try:
                self.cycle(m, name)
            except HarnessTimeout as e:
                self.fail(f"{name}: {e}")

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self._offsets: dict[str, int] = {}
        self._started = time.monotonic()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        threads = [threading.Thread(target=self.worker, args=(i,)) for i in range(self.machines)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(1.0)  # the main thread stays free to take the signals
        with self.lock:
            self.save()
        self.report()
        return 1 if self.figures.failures else 0

    def report(self) -> None:
        f = self.figures
        print(f"soak: {f.cuts} cuts (target {self.target}), {f.boots} boots, {f.boots_reaching_the_core} reached "
              f"the core; {f.records_checked} records checked, {f.torn_records_found} torn found on the disk, "
              f"{f.torn_records_reported} reported by the init, {f.records_lost} lost; {f.fsck_repairs} FAT repairs "
              f"by the init, {f.lost_clusters} lost clusters left for them ({f.salvaged_files} FSCK*.REC now); "
              f"{f.seconds / 60:.1f} min in all; {len(f.failures)} failures -> {self.path}")
        for line in f.failures:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make soak", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--image", type=Path, default=Path("build/test/appliance.raw"))
    ap.add_argument("--out", type=Path, default=Path("build/soak"))
    ap.add_argument("--cuts", type=int, default=int(os.environ.get("SOAK_CUTS") or 1000),
                    help="cuts in all, counting earlier runs (SOAK_CUTS=, default 1000)")
    ap.add_argument("--machines", type=int, default=2)
    ap.add_argument("--window", type=float, default=3.5, help="seconds after the core starts within which to cut")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(argv)
    if not a.image.exists():
        print(f"soak: {a.image} is missing: run make test-image", file=sys.stderr)
        return 2
    return Soak(a.image, a.out, a.cuts, a.machines, a.window, a.seed).run()


if __name__ == "__main__":
    sys.exit(main())
