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

``--data`` (``make soak SOAK_DATA=1``) soaks the data partition instead, on 2 GiB disks:
the core commits SQLite transactions and fsyncs files without pause, saying each
commit's id (``data`` action). Cuts land while it commits or, for LATE_SHARE of them,
in the first seconds of a boot (the data step's e2fsck, the first boot's mkfs). After
each cut the data file system is copied off the disk, its journal replayed on the copy,
then ``e2fsck -fn`` must find it clean and its database must hold every id said before
the cut, without a gap, and pass SQLite's integrity check; the next boot's core says
the same of what it finds.

Figures go to ``build/soak/soak.json`` after every cut; a later run resumes from them
on the same disks, so a long soak can span several runs. SIGINT or SIGTERM (Ctrl-C)
ends a run after the cycles under way, with the figures printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.esp import backoff, gpt, layout, records
from appliance.harness.machine import HarnessTimeout, Machine
from appliance.init import data
from appliance.media import data as media_data
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
    action = b"soak"  # the test core's action at every boot
    figures_kind: type[Figures] = Figures

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
        self.figures = self.figures_kind(**saved.get("figures", {}))
        self.history_bound = int(saved.get("history_bound", 4))
        self.seen: dict[str, dict[str, str]] = saved.get("records", {})  # machine -> whole records before the cut
        self.torn: dict[str, list[str]] = saved.get("torn", {})  # machine -> torn records after the last cut
        self.repair_due: dict[str, bool] = saved.get("repair_due", {})  # machine -> lost clusters after the last cut
        self._already = self.figures.seconds  # earlier runs'
        self._started = 0.0
        self.salvaged: dict[str, int] = {}  # machine -> salvaged_files on its disk now
        self.stop = threading.Event()  # SIGINT/SIGTERM: finish the cycles under way, then report

    def state(self) -> dict[str, object]:
        """What a later run resumes from, besides the figures."""
        return {"history_bound": self.history_bound, "records": self.seen, "torn": self.torn,
                "repair_due": self.repair_due}

    def save(self) -> None:
        if self._started:
            self.figures.seconds = self._already + time.monotonic() - self._started
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"figures": asdict(self.figures), **self.state()}, indent=1))
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
        m = self.make_machine(name)
        salvaged = salvaged_files(m)  # a resumed run counts both disks from its first cut
        with self.lock:
            if fresh:
                self.seen[name] = {}  # a new disk: nothing on it was seen before
            self.salvaged[name] = salvaged
        m.esp_write(layout.TEST_ALWAYS, self.action)
        while not self.done():
            try:
                self.cycle(m, name)
            except HarnessTimeout as e:
                self.fail(f"{name}: {e}")

    def make_machine(self, name: str) -> Machine:
        return Machine(self.image, self.out / name, name=f"soak-{name}", log_dir=self.out / "logs", resume=True)

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

    def summary(self) -> str:
        f = self.figures
        return (f"soak: {f.cuts} cuts (target {self.target}), {f.boots} boots, {f.boots_reaching_the_core} reached "
                f"the core; {f.records_checked} records checked, {f.torn_records_found} torn found on the disk, "
                f"{f.torn_records_reported} reported by the init, {f.records_lost} lost; {f.fsck_repairs} FAT "
                f"repairs by the init, {f.lost_clusters} lost clusters left for them ({f.salvaged_files} FSCK*.REC "
                "now)")

    def report(self) -> None:
        f = self.figures
        print(f"{self.summary()}; {f.seconds / 60:.1f} min in all; {len(f.failures)} failures -> {self.path}")
        for line in f.failures:
            print(f"  {line}")


DATA_DISK = 2 << 30
ROWS = r"matrix core: data: (\d+) rows, ids up to (\d+), integrity (\w+)\r*\n"
COMMITTED = re.compile(r"matrix core: data committed (\d+)\r*\n")
DATA_UP = r"init: data: /dev/\w+ ext4 [\d.]+ \w+ at /data"
DATA_NONE = "init: data: none"


@dataclass
class DataFigures(Figures):
    """The data soak's figures (the ESP's, inherited, stay at zero there)."""
    first_boots: int = 0  # boots that made the file system (the first, and any cut before it was done)
    commits_said: int = 0  # the highest commit id said before each cut, summed over the cuts
    commits_found: int = 0  # rows in the database after each cut, summed
    journal_replays: int = 0  # cuts whose copy had a journal to replay
    e2fsck_repairs: int = 0  # boots whose init said e2fsck repaired something


def data_after_cut(disk: Path, work: Path) -> tuple[str, int, int, bool]:
    """The data file system of a cut disk, copied off it (e2image), its journal replayed on
    the copy: (problem or "", rows, the highest id, whether there was a journal to replay)."""
    import shutil
    import sqlite3
    import subprocess
    parts = [p for p in gpt.read_partitions(str(disk)) if p.type_guid == data.TYPE]
    if not parts or parts[0].name != data.NAME:
        return "", 0, 0, False  # not made yet: a cut during the first boot's partitioning
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy = work / "data.img"
    try:
        replay = media_data.copy_fs(str(disk), parts[0], str(copy))
    except media_data.DataError as e:
        return str(e), 0, 0, False
    # What every boot runs, forced to a whole check: the journal's leftovers a cut always
    # leaves (the free counts the superblock does not journal, the orphan list) are what
    # -p may fix; anything else stops it. Then a read-only whole check must find nothing.
    r = subprocess.run(["e2fsck", "-fp", str(copy)], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        return f"e2fsck -fp: exit {r.returncode}: {(r.stdout + r.stderr).strip()[-500:]}", 0, 0, replay
    r = subprocess.run(["e2fsck", "-fn", str(copy)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"e2fsck -fn after -p: exit {r.returncode}: {r.stdout.strip()[-500:]}", 0, 0, replay
    listing = subprocess.run(["debugfs", "-R", "ls -p /", str(copy)], capture_output=True, text=True).stdout
    if "/commits.sqlite/" not in listing:
        return "", 0, 0, replay  # the core had not made its database yet
    for name in ("commits.sqlite", "commits.sqlite-wal"):
        if f"/{name}/" in listing:
            subprocess.run(["debugfs", "-R", f'dump /{name} "{work / name}"', str(copy)], check=True,
                           capture_output=True)
    db = sqlite3.connect(work / "commits.sqlite")
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        count, top = db.execute("SELECT count(*), coalesce(max(id), 0) FROM commits").fetchone()
    except sqlite3.DatabaseError as e:
        return f"the database: {e}", 0, 0, replay
    finally:
        db.close()
    if integrity != "ok":
        return f"the database's integrity check: {integrity}", count, top, replay
    if count != top:
        return f"the database has {count} rows but ids up to {top}: a gap", count, top, replay
    return "", count, top, replay


class DataSoak(Soak):
    """The data partition's soak: see the module's docstring."""
    action = b"data"
    figures_kind = DataFigures
    figures: DataFigures

    def __init__(self, image: Path, out: Path, target: int, machines: int, window: float, seed: int | None) -> None:
        super().__init__(image, out, target, machines, window, seed)
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.said: dict[str, int] = saved.get("said", {})  # machine -> highest id said before its last cut

    def state(self) -> dict[str, object]:
        return {"said": self.said}

    def make_machine(self, name: str) -> Machine:
        return Machine(self.image, self.out / name, name=f"soak-data-{name}", log_dir=self.out / "logs",
                       resume=True, disk_size=DATA_DISK)

    def cycle(self, m: Machine, name: str) -> None:
        with self.lock:
            late = self.rng.random() < LATE_SHARE
            wait = self.rng.uniform(0, self.window)
        problems = []
        with m:
            m.wait_boot(timeout=180)
            if late:  # in the init's data step (the check, the mount; mkfs on a first boot)
                m.watch(wait * NEXT_BOOT_WINDOW / self.window)
            else:
                m.expect(CORE_STARTED, 300)  # every boot after a cut reaches the core
                seen = m.expect(ROWS, 120)
                count, top, integrity = int(seen.group(1)), int(seen.group(2)), seen.group(3)
                if integrity != "ok" or count != top or top < self.said.get(name, 0):
                    problems.append(f"the core found {count} rows, ids up to {top}, integrity {integrity}, after "
                                    f"{self.said.get(name, 0)} were said before the last cut")
                m.watch(wait)
            m.power_cut()
        log = m.output_since_start()
        text, self._offsets[name] = log[self._offsets.get(name, 0):], len(log)
        said = max([int(n) for n in COMMITTED.findall(text)] or [0])
        problem, count, top, replayed = data_after_cut(m.disk, self.out / name / "check")
        with self.lock:
            f = self.figures
            f.cuts += 1
            f.boots += text.count("init: appliance init ")
            f.boots_reaching_the_core += text.count("init: core started:")
            f.first_boots += text.count("init: data: making an ext4 file system")
            f.e2fsck_repairs += text.count("e2fsck repaired the file system")
            f.journal_replays += replayed
            if DATA_NONE in text:
                problems.append(f"a boot ran without its data partition: {text[text.index(DATA_NONE):][:300]!r}")
            if problem:
                problems.append(problem)
            if said and top < said and not problem:
                problems.append(f"commits {top + 1}..{said} were said before the cut and are not in the database")
            f.commits_said += said
            f.commits_found += count
            self.said[name] = max(said, self.said.get(name, 0)) if top >= said else said
            self.save()
            cuts = f.cuts
        for p in problems:
            self.fail(f"{name}, cut {cuts}: {p} (console: {m.log_path})")
        if cuts % 10 == 0:
            print(f"soak: {cuts} cuts, {f.boots} boots, {f.commits_found} rows checked", flush=True)

    def summary(self) -> str:
        f = self.figures
        return (f"soak (data): {f.cuts} cuts (target {self.target}), {f.boots} boots, {f.boots_reaching_the_core} "
                f"reached the core, {f.first_boots} made the file system; after each cut the file system checked "
                f"clean ({f.journal_replays} with a journal to replay) and held every commit said before it "
                f"({f.commits_found} rows found against {f.commits_said} said, summed over the cuts); "
                f"{f.e2fsck_repairs} e2fsck repairs at boot")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make soak", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--image", type=Path, default=Path("build/test/appliance.raw"))
    ap.add_argument("--out", type=Path, default=Path("build/soak"))
    ap.add_argument("--cuts", type=int, default=int(os.environ.get("SOAK_CUTS") or 1000),
                    help="cuts in all, counting earlier runs (SOAK_CUTS=, default 1000)")
    ap.add_argument("--machines", type=int, default=2)
    ap.add_argument("--window", type=float, default=3.5, help="seconds after the core starts within which to cut")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data", action="store_true", help="soak the data partition: SQLite commits (SOAK_DATA=1)")
    a = ap.parse_args(argv)
    if not a.image.exists():
        print(f"soak: {a.image} is missing: run make test-image", file=sys.stderr)
        return 2
    kind = DataSoak if a.data else Soak
    return kind(a.image, a.out, a.cuts, a.machines, a.window, a.seed).run()


if __name__ == "__main__":
    sys.exit(main())
