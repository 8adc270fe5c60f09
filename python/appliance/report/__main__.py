"""``python3 -m appliance.report``: the crash reporter the init starts, a process of its
own. It waits for the network, sends the history's unsent records, says on its standard
error (which the init puts on the console) what it did, and exits when nothing is left.

    --esp DIR      where the ESP is mounted (the init's mount point)
    --once         stop at the first wait instead of waiting (make dumps SEND=)
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable

from appliance import __version__
from appliance import initconf as config
from appliance.esp import identity, kvfile, layout
from appliance.esp.files import EspFiles, MountedEsp
from appliance.esp.history import History
from appliance.report import dsn as dsns
from appliance.report import event
from appliance.report.queue import Reporter
from appliance.running import machine_id, wait_for_network, write_state


class Settings:
    def __init__(self, dsn: dsns.Dsn | None, ca_file: str | None, why: str) -> None:
        self.dsn, self.ca_file, self.why = dsn, ca_file, why  # why: where it came from, or why off


def settings(files: EspFiles | None, conf: config.Config) -> Settings:
    """Where reports go: the ESP's file (a fleet's choice) over the image's CRASH_REPORTS=."""
    text, ca, origin = conf.crash_reports, conf.crash_reports_ca, "the image"
    if files is not None:
        try:
            raw = kvfile.parse(files.read(layout.CRASH_REPORTS, 4096))
            text, ca = raw.get("dsn", text), raw.get("ca", ca)
            origin = files.where(layout.CRASH_REPORTS)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            return Settings(None, None, f"{files.where(layout.CRASH_REPORTS)} is unreadable ({e}): not sending")
    if not text or text == "off":
        return Settings(None, None, f"off ({origin})")
    try:
        return Settings(dsns.parse(text), ca or None, origin)
    except ValueError as e:
        return Settings(None, None, f"the DSN in {origin} is not usable: {e}")


def this_machine(conf: config.Config, os_release: str = identity.OS_RELEASE) -> event.Machine:
    image = identity.read(os_release)
    core_dir = conf.core if os.path.isdir(conf.core) else os.path.dirname(conf.core)
    return event.Machine(image.version or "unknown", image.build_id, socket.gethostname(), machine_id(),
                         core_dir, f"appliance/{__version__}")


def tell(path: str) -> Callable[[str, int], None]:
    """How the reporter tells the init's way out whether waiting for it is worth it."""
    def told(state: str, pending: int) -> None:
        write_state(path, {"state": state, "pending": pending})
    return told


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance.report", description=__doc__.splitlines()[0])
    parser.add_argument("--esp", default=layout.MOUNT)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--state", default="", help="a file that says sending | waiting | done (the init's)")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)  # the init relays its standard error to the console

    conf, _ = config.load()
    files = MountedEsp(args.esp)
    chosen = settings(files, conf)
    if chosen.dsn is None:
        say(f"crash reports: {chosen.why}")
        return 0
    history = History(files, layout.HISTORY_DIR, conf.history_records, conf.history_bytes)
    reporter = Reporter(history, chosen.dsn, this_machine(conf), say, chosen.ca_file,
                        event.read_source(("/usr/lib/appliance/",)),
                        tell=tell(args.state) if args.state else lambda state, pending: None)
    if not reporter.pending():
        say(reporter.summary(0))
        return 0
    if conf.network == "dhcp" and not wait_for_network(say, "crash reports"):
        say("crash reports: this boot has no network: the records wait for one")
        return 0
    reporter.run(forever=not args.once)
    return 0


if __name__ == "__main__":
    sys.exit(main())
