"""``python3 -m appliance.channel.check``: the update checker the init starts, a process of
its own (whatever a channel sends is read here, never in PID 1).

Once the network is up, and then every interval (with a random spread, so a fleet does
not check at the same second), it refreshes the channel's metadata with python-tuf
(signatures, versions, expiry on the machine's clock), reads the index, and takes the
newest release that is newer than the running image, meant for this machine by its
rollout, and not rolled back here before. The image is downloaded within its length and
a deadline, staged with the same ``staging.stage`` as every update (which checks the
UKI and its signer), and the machine reboots into the trial: the init is asked with
SIGTERM, as for any shutdown, unless the core said it chooses the moment
(``appliance.update.defer_restarts``). Every outcome is said (the init puts it on the
console), written to the update log, and sent to the error tracker when there is one.

    --esp DIR      where the ESP is mounted (the init's mount point)
    --state FILE   where it says what it is doing (checking | waiting | staged)
    --once         one check, then exit
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from appliance import __version__, efivars
from appliance import initconf as config
from appliance.channel import index as idx
from appliance.esp import identity, kvfile, layout, staging, updatelog
from appliance.esp.files import EspFiles, MountedEsp
from appliance.running import machine_id, wait_for_network, write_state

MAX_IMAGE = 512 * 1024 * 1024  # bytes: more than any UKI (the ESP's room is checked too)
METADATA_SECONDS = 60.0  # one metadata file, whole (the image: fetch.FILE_SECONDS)
MAX_ROOTS = 32  # root versions walked in one check
SPREAD = 0.1  # each interval drawn within +-10%
RETRY_SECONDS = 300.0  # after a failed check, at most this long (or the interval, if shorter)
DOWNLOAD_DIR = "/run/appliance"  # RAM: the image is checked before it touches the ESP


class Settings(NamedTuple):
    url: str  # "" off
    interval: float
    ca_file: str | None
    origin: str  # where they came from, or why off


def settings(files: EspFiles, conf: config.Config) -> Settings:
    """The ESP's file (a fleet's choice) over the image's UPDATE_CHANNEL=, read at every check."""
    url, interval, ca, origin = conf.update_channel, conf.update_interval_seconds, conf.update_ca, "the image"
    try:
        raw = kvfile.parse(files.read(layout.UPDATE_CHANNEL, 4096))
        url, ca = raw.get("url", url), raw.get("ca", ca)
        interval = float(raw.get("interval", interval))
        origin = files.where(layout.UPDATE_CHANNEL)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        return Settings("", interval, None, f"{files.where(layout.UPDATE_CHANNEL)} is unreadable ({e})")
    if not url or url == "off":
        return Settings("", interval, None, f"off ({origin})")
    if not url.startswith(("http://", "https://")):
        return Settings("", interval, None, f"the URL {url[:100]!r} in {origin} is not http:// or https://")
    return Settings(url if url.endswith("/") else url + "/", max(interval, 5.0), ca or None, origin)


def rolled_back(files: EspFiles) -> frozenset[str]:
    try:
        return frozenset(kvfile.parse(files.read(layout.ROLLED_BACK, 64 * 1024)))
    except FileNotFoundError:
        return frozenset()
    except (OSError, ValueError):
        return frozenset()  # unreadable: the worst case is one more try of a bad version, rolled back again


def trusted_dir(files: MountedEsp, built_in: str) -> str:
    """The directory of the metadata this machine trusts (on the ESP: what it trusted
    before a reboot still holds, so a replay of older metadata is found out). It starts
    from the image's root, and takes a newer root from a newer image."""
    path = files.where(layout.CHANNEL_DIR)
    os.makedirs(path, exist_ok=True)
    mine = os.path.join(path, "root.json")
    with open(built_in, "rb") as f:
        image_root = f.read(512 * 1024)
    try:
        with open(mine, "rb") as f:
            kept = f.read(512 * 1024)
    except OSError:
        kept = b""
    if _root_version(kept) < _root_version(image_root):
        tmp = mine + ".tmp"
        with open(tmp, "wb") as f:
            f.write(image_root)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, mine)
    return path


def _root_version(data: bytes) -> int:
    import json
    try:
        v = json.loads(data)["signed"]["version"]
        return v if isinstance(v, int) else 0
    except (ValueError, KeyError, TypeError):
        return 0


class Outcome(NamedTuple):
    kind: str  # nothing | staged | refused | failed (| committed: the init's, reported by the checker)
    line: str  # what is said and logged
    staged: staging.Staged | None = None


def explain(e: BaseException) -> str:
    """A TUF or network failure in words a person running a fleet reads."""
    from tuf.api import exceptions as tuf
    text = str(e) or type(e).__name__
    if isinstance(e, tuf.BadVersionNumberError):
        return f"the channel's metadata is older than what this machine already trusts (a replay?): {text}"
    if isinstance(e, tuf.ExpiredMetadataError):
        return f"the channel's metadata has expired (a frozen mirror, or nobody re-signed it): {text}"
    if isinstance(e, tuf.LengthOrHashMismatchError):
        return f"a file does not match its signed length and hash (changed on the mirror?): {text}"
    if isinstance(e, tuf.UnsignedMetadataError):
        return f"metadata not signed by the channel's keys: {text}"
    if isinstance(e, tuf.DownloadError):
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        return f"the channel could not be read: {text}{cause}"
    if isinstance(e, tuf.RepositoryError):
        return f"the channel's metadata is refused: {type(e).__name__}: {text}"
    return f"{type(e).__name__}: {text}"


class Checker:
    def __init__(self, files: MountedEsp, conf: config.Config, say: Callable[[str], None],
                 running: identity.Identity, machine: str, tell: Callable[[str], None] = lambda state: None,
                 report: Callable[[Outcome], None] = lambda outcome: None,
                 root: str = config.CHANNEL_ROOT, secure_boot: bool = False) -> None:
        self.files, self.conf, self.say, self.running, self.machine = files, conf, say, running, machine
        self.tell, self.report, self.root, self.secure_boot = tell, report, root, secure_boot
        self.reported = ""  # the kind of the last outcome sent to the tracker

    def check(self, chosen: Settings) -> Outcome:
        """One check: nothing, staged, refused (what the channel sent is not taken) or
        failed (the channel could not be read)."""
        from tuf.api import exceptions as tuf
        from tuf.ngclient import Updater, UpdaterConfig

        from appliance.channel.fetch import FILE_SECONDS, BoundedFetcher
        from appliance.report.send import Deadline
        self.tell("checking")
        fetcher = BoundedFetcher(chosen.ca_file, file_seconds=METADATA_SECONDS,
                                 user_agent=f"appliance/{__version__}")
        try:
            updater = Updater(trusted_dir(self.files, self.root), chosen.url, DOWNLOAD_DIR,
                              chosen.url + "targets/", fetcher, UpdaterConfig(max_root_rotations=MAX_ROOTS))
            updater.refresh()
            info = updater.get_targetinfo(idx.INDEX)
            if info is None:
                return Outcome("refused", "refused: the channel's targets have no index (channel.json)")
            if info.length > idx.MAX_INDEX:
                return Outcome("refused", f"refused: the channel's index is {info.length} bytes")
            with tempfile.NamedTemporaryFile(dir=DOWNLOAD_DIR) as f:
                updater.download_target(info, f.name)
                index = idx.parse(f.read(idx.MAX_INDEX + 1))
            choice = idx.choose(index, self.running.version, self.machine, rolled_back(self.files))
            if choice.release is None:
                return Outcome("nothing", f"checked: {choice.why}")
            release = choice.release
            info = updater.get_targetinfo(release.target)
            if info is None:
                return Outcome("refused", f"refused: {release.version}'s image is not among the signed targets")
            if info.length > MAX_IMAGE:
                return Outcome("refused", f"refused: {release.version}'s image is {info.length >> 20} MiB")
            free = self.files.free()
            if info.length + staging.RESERVE > free:
                return Outcome("refused", f"refused: {release.version}'s image ({info.length >> 20} MiB) does not "
                                          f"fit on the ESP ({free >> 20} MiB free, {staging.RESERVE >> 20} MiB kept "
                                          "for the crash history)")
            self.say(f"update channel: {choice.why}: downloading its image ({info.length >> 20} MiB)")
            started = time.monotonic()
            path = os.path.join(DOWNLOAD_DIR, "update.efi")
            try:
                fetcher.file_seconds = FILE_SECONDS
                updater.download_target(info, path)
                self.say(f"update channel: {release.version} downloaded and verified in "
                         f"{time.monotonic() - started:.1f} s; staging it")
                with open(path, "rb") as f:
                    data = f.read(MAX_IMAGE)
            finally:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        except (idx.BadIndex, tuf.RepositoryError) as e:
            return Outcome("refused", f"refused: {explain(e)}")
        except (tuf.DownloadError, Deadline, OSError) as e:
            return Outcome("failed", f"failed: {explain(e)}")
        except Exception as e:  # noqa: BLE001 - a bug, or bytes that defeat a parser: said, and checked again later
            return Outcome("failed", f"failed: {explain(e)}")
        try:
            staged = staging.stage(self.files, data, secure_boot=self.secure_boot)
        except staging.StageError as e:
            return Outcome("refused", f"refused: {release.version}: {e}")
        except OSError as e:
            return Outcome("failed", f"failed: writing {release.version} to the ESP: {e}; the images on it are as "
                                     "they were")
        return Outcome("staged", f"staged {staged.version} ({staged.build_id}) as generation {staged.generation}, "
                                 f"{staged.tries} tries, from the channel", staged)

    def outcome(self, result: Outcome) -> None:
        """Said and logged, every time; to the tracker when its kind differs from the last
        one sent (a channel down for a day is one event, not three hundred)."""
        self.say(f"update channel: {result.line}")
        try:
            updatelog.append(self.files, f"channel: {result.line}")
        except OSError as e:
            self.say(f"update channel: could not write the update log: {e}")
        if result.kind != self.reported:
            self.reported = result.kind
            self.report(result)

    def report_commit(self) -> None:
        """The init's commit of this image (in the update log) to the tracker, once: the
        fleet sees its rollouts land where it sees them refused or rolled back (a
        rollback is a record of the crash history, sent by the reporter)."""
        version = self.running.version
        marker = f"{layout.CHANNEL_DIR}/committed-reported.txt"
        try:
            if not any(line.split(" ", 1)[-1].startswith(f"committed {version} (")
                       for line in updatelog.read(self.files, 50)):
                return
            if self.files.exists(marker) and self.files.read(marker, 200).decode(errors="replace").strip() == version:
                return
            self.report(Outcome("committed", f"committed {version}: it is the default image from now on"))
            self.files.write(marker, f"{version}\n".encode())
        except OSError as e:
            self.say(f"update channel: could not note the commit's report: {e}")

    def run(self, once: bool = False, sleep: Callable[[float], None] = time.sleep) -> int:
        while True:
            chosen = settings(self.files, self.conf)
            if not chosen.url:
                self.say(f"update channel: {chosen.origin}")
                return 0
            self.report_commit()
            result = self.check(chosen)
            self.outcome(result)
            if result.staged is not None:
                self.restart(result.staged)
                return 0
            if once:
                return 0 if result.kind != "failed" else 1
            wait = chosen.interval * random.uniform(1 - SPREAD, 1 + SPREAD)
            if result.kind == "failed":
                wait = min(wait, RETRY_SECONDS)
            self.tell("waiting")
            self.say(f"update channel: next check in {wait:.0f} s")
            sleep(wait)

    def restart(self, staged: staging.Staged) -> None:
        """Into the trial: now, or when the core says (it asked to choose the moment)."""
        self.tell("staged")
        if os.path.exists(config.UPDATE_DEFER):
            self.say(f"update channel: {staged.version} waits for the core to restart (it chooses the moment)")
            return
        self.say(f"update channel: restarting into {staged.version}'s trial")
        os.kill(1, signal.SIGTERM)


def tracker(conf: config.Config, files: EspFiles, say: Callable[[str], None]) -> Callable[[Outcome], None]:
    """Each outcome as an event to the error tracker, when the machine sends crash reports."""
    from appliance.report import __main__ as reports
    chosen = reports.settings(files, conf)
    if chosen.dsn is None:
        return lambda outcome: None
    dsn, ca_file = chosen.dsn, chosen.ca_file
    machine = reports.this_machine(conf)

    def send(outcome: Outcome) -> None:
        from appliance.report import event, send
        body = event.envelope(update_event(outcome, machine), dsn)
        answer = send.post(dsn.envelope_url, {"Content-Type": "application/x-sentry-envelope",
                                              "X-Sentry-Auth": dsn.auth(machine.client)}, body, ca_file)
        if not answer.ok:
            say(f"update channel: the tracker did not take the outcome: {answer.error or answer.status}")
    return send


def update_event(outcome: Outcome, machine: Any) -> dict[str, Any]:
    import uuid
    level = "warning" if outcome.kind in ("refused", "failed") else "info"
    return {"event_id": uuid.uuid4().hex, "timestamp": time.time(), "platform": "python", "level": level,
            "logger": "appliance.update", "release": machine.release, "server_name": machine.host,
            "message": {"formatted": f"update channel: {outcome.line}"},
            "tags": {"kind": "update", "update": outcome.kind, "build_id": machine.build_id,
                     "machine_id": machine.machine_id}}


def tell(path: str) -> Callable[[str], None]:
    def told(state: str) -> None:
        write_state(path, {"state": state})
    return told


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance.channel.check", description=__doc__.splitlines()[0])
    parser.add_argument("--esp", default=layout.MOUNT)
    parser.add_argument("--state", default="")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)  # the init relays its standard error to the console

    conf, _ = config.load()
    files = MountedEsp(args.esp)
    if not os.path.exists(config.CHANNEL_ROOT):
        say("update channel: this image has no channel root (make image UPDATE_CHANNEL=): not checking")
        return 0
    chosen = settings(files, conf)
    if not chosen.url:
        say(f"update channel: {chosen.origin}")
        return 0
    if conf.network == "dhcp" and not wait_for_network(say, "update channel"):
        say("update channel: this boot has no network: not checking")
        return 0
    os.makedirs(DOWNLOAD_DIR, exist_ok=True)
    checker = Checker(files, conf, say, identity.read(), machine_id(), tell(args.state) if args.state else
                      lambda state: None, tracker(conf, files, say),
                      secure_boot=efivars.secure_boot() is True)
    return checker.run(args.once)


if __name__ == "__main__":
    sys.exit(main())
