"""Read an appliance's crash dumps off its stick or disk image, on another machine.

    python -m appliance.media.dumps SOURCE                 list the history and the last runtime log
    python -m appliance.media.dumps SOURCE --show N|all|runtime
    python -m appliance.media.dumps SOURCE --save DIR      copy them, byte for byte
    python -m appliance.media.dumps SOURCE --clear [--yes] delete them (asks first)
    python -m appliance.media.dumps SOURCE --send DSN      send the unsent ones to a tracker

SOURCE is a block device (/dev/sdX) or an image file. Nothing is mounted and nothing
is booted: the ESP is read with mtools. Each history record's length and checksum are
checked; a torn or corrupt record is shown as such, with whatever of it is there.
Exit status: 0 done, 1 a record is torn or corrupt (after showing everything), 2 the
source or the request is unusable.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable
from typing import NamedTuple, TextIO

from appliance.esp import backoff, bootentries, layout, records, updatelog
from appliance.esp.history import History
from appliance.media import blockdev, espfs


class Dump(NamedTuple):
    sequence: int
    name: str  # the file name on the ESP
    data: bytes
    record: records.Record
    mark: str = ""  # what crash reports made of it: "" (unsent), sent, refused


def load_history(esp: espfs.EspImage) -> list[Dump]:
    """Every record, read by the code the init writes them with; nothing is removed."""
    out = []
    for sequence, _, mark, path in History(esp).named():
        data = esp.read(path)
        out.append(Dump(sequence, path.rsplit("/", 1)[-1], data, records.decode(data), mark))
    return out


def load_runtime_log(esp: espfs.EspImage) -> bytes | None:
    """The runtime log the last boot left, not yet archived; None when there is none."""
    return esp.read(layout.RUNTIME_LOG) if esp.exists(layout.RUNTIME_LOG) else None


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _status(record: records.Record) -> str:
    return "ok" if record.ok else f"!! {record.problem}"


def list_dumps(esp: espfs.EspImage, dumps: list[Dump], log: bytes | None, out: TextIO) -> None:
    part = esp.partition
    out.write(f"ESP of {esp.disk}: partition {part.number} \"{part.name}\" ({str(part.unique_guid).upper()}), "
              f"{_size(esp.free())} free\n")
    out.write(f"crash history ({layout.HISTORY_DIR}): {len(dumps) or 'no'} record{'s' if len(dumps) != 1 else ''}\n")
    if dumps:
        out.write(f"  {'#':>6}  {'kind':<14} {'size':>10}  {'image':<20} {'how that boot ended':<40} "
                  f"{'report':<8} check\n")
    for d in dumps:
        ended = d.record.meta.get("ended") or d.record.meta.get("boot-ended", "-")
        image = d.record.meta.get("image", "-").split(" (")[0]  # the version; --show gives the build id
        out.write(f"  {d.sequence:>6}  {d.record.kind:<14} {_size(len(d.data)):>10}  {image[:20]:<20} "
                  f"{ended[:40]:<40} {d.mark or 'unsent':<8} {_status(d.record)}\n")
    if log is not None:
        out.write(f"last runtime log ({layout.RUNTIME_LOG}): {_size(len(log))}, not archived yet (the appliance has "
                  "not booted since it was written); --show runtime prints it\n")
    else:
        out.write(f"last runtime log ({layout.RUNTIME_LOG}): none\n")
    if esp.exists(layout.BACKOFF):
        try:
            failures = backoff.parse(esp.read(layout.BACKOFF))
            out.write(f"crash-loop counter: {failures} failure(s) in a row\n")
        except (ValueError, espfs.EspError) as e:
            out.write(f"crash-loop counter: {layout.BACKOFF} unreadable ({e})\n")
    entries = [n for n in esp.list(layout.ENTRIES_DIR) if bootentries.parse_name(n)]
    out.write(f"boot entries ({layout.ENTRIES_DIR}): {', '.join(entries) or 'none'}\n")
    lines = updatelog.read(esp, last=21)
    if lines:
        out.write(f"update log ({layout.UPDATE_LOG}), newest last{' (the last 20)' if len(lines) > 20 else ''}:\n")
        out.write("".join(f"  {line}\n" for line in lines[-20:]))
    else:
        out.write(f"update log ({layout.UPDATE_LOG}): none (no update was staged)\n")
    salvaged = esp.list(layout.SALVAGED_DIR)
    if salvaged:
        out.write(f"fragments fsck.fat salvaged after power cuts ({layout.SALVAGED_DIR}, the newest "
                  f"{layout.SALVAGED_KEEP} kept): {', '.join(salvaged)}\n")


def show(d: Dump, out: TextIO) -> None:
    rule = "=" * 20
    out.write(f"{rule} record {d.sequence} ({d.name}): {_status(d.record)} {rule}\n")
    for key, value in d.record.meta.items():
        out.write(f"{key}: {value}\n")
    out.write("\n")
    out.write(d.record.payload.decode("utf-8", "replace"))
    if d.record.payload and not d.record.payload.endswith(b"\n"):
        out.write("\n")
    out.write(f"{rule} end of record {d.sequence} {rule}\n")


def save(dumps: list[Dump], log: bytes | None, folder: str, out: TextIO) -> int:
    """Copy the records and the runtime log into ``folder`` as they are; never overwrite."""
    os.makedirs(folder, exist_ok=True)
    files = [(d.name, d.data) for d in dumps]
    if log is not None:
        files.append((layout.RUNTIME_LOG.rsplit("/", 1)[-1], log))
    clashes = [name for name, _ in files if os.path.exists(os.path.join(folder, name))]
    if clashes:
        out.write(f"dumps: {folder} already has {', '.join(clashes)}; nothing saved (choose an empty folder)\n")
        return 2
    for name, data in files:
        with open(os.path.join(folder, name), "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    out.write(f"dumps: saved {len(files)} file(s) to {folder}\n")
    return 0


def clear(esp: espfs.EspImage, dumps: list[Dump], log: bytes | None, yes: bool,
          ask: Callable[[str], str] | None, out: TextIO) -> int:
    if stat.S_ISBLK(os.stat(esp.disk).st_mode):
        _, why = blockdev.refusals(esp.disk, 0, allow_non_removable=os.path.basename(os.path.realpath(esp.disk)))
        if why:
            out.write(f"dumps: not clearing {esp.disk}:\n" + "".join(f"  - {w}\n" for w in why))
            return 2
    targets = [f"{layout.HISTORY_DIR}/{d.name}" for d in dumps]
    if log is not None:
        targets.append(layout.RUNTIME_LOG)
    if not targets:
        out.write("dumps: nothing to clear\n")
        return 0
    if not yes:
        if ask is None:
            if not sys.stdin.isatty():
                out.write("dumps: no terminal to confirm on and --yes not given; nothing deleted\n")
                return 2
            ask = input
        if ask(f"Delete {len(targets)} file(s) from {esp.disk}? Type 'clear' to delete: ").strip() != "clear":
            out.write("dumps: not confirmed; nothing deleted\n")
            return 2
    for path in targets:
        esp.delete(path)
    out.write(f"dumps: deleted {len(targets)} file(s) ({', '.join(p.rsplit('/', 1)[-1] for p in targets)})\n")
    return 0


def send(esp: espfs.EspImage, dsn_text: str, ca_file: str | None, out: TextIO) -> int:
    """The stick's unsent records to a tracker (an air-gapped site's), each with the event id
    the machine would have used, marked sent on the stick as the machine marks them."""
    from appliance import __version__
    from appliance.report import dsn as dsns
    from appliance.report import event, queue
    try:
        dsn = dsns.parse(dsn_text)
    except ValueError as e:
        out.write(f"dumps: SEND={dsn_text!r}: {e}\n")
        return 2
    history = History(esp, layout.HISTORY_DIR)

    def say(text: str) -> None:
        out.write(f"dumps: {text}\n")
        out.flush()

    try:
        state = queue.DayState.parse(esp.read(layout.REPORTS_STATE, 4096))
    except (OSError, ValueError):
        state = queue.DayState()
    machine = event.Machine("unknown", "", state.host, state.machine_id, client=f"appliance/{__version__}")
    reporter = queue.Reporter(history, dsn, machine, say, ca_file, limits=queue.Limits(1 << 30, 1 << 50))
    pending = len(reporter.pending())
    if not pending:
        say("crash reports: nothing to send: every record on the stick is marked sent or refused")
        return 0
    say(f"crash reports: {pending} unsent record(s) to {dsn.host}")
    reporter.run(forever=False)
    left = len(reporter.pending())
    if left:
        say(reporter.summary(left))
    return 1 if left or reporter.refused else 0


def run(source: str, show_what: str = "", save_to: str = "", do_clear: bool = False, yes: bool = False,
        ask: Callable[[str], str] | None = None, out: TextIO = sys.stdout, send_to: str = "",
        ca_file: str | None = None) -> int:
    if not os.path.exists(source):
        out.write(f"dumps: {source} does not exist\n")
        return 2
    try:
        esp = espfs.EspImage(source)
        dumps = load_history(esp)
        log = load_runtime_log(esp)
    except espfs.EspError as e:
        out.write(f"dumps: {e}\n")
        return 2
    status = 0
    if send_to:
        return send(esp, send_to, ca_file, out)
    if show_what:
        if show_what == "runtime":
            if log is None:
                out.write(f"dumps: {source} has no runtime log\n")
                return 2
            out.write(log.decode("utf-8", "replace"))
            return 0
        else:
            chosen = dumps if show_what == "all" else [d for d in dumps if str(d.sequence) == show_what.lstrip("0")
                                                         or d.name == show_what]
            if not chosen:
                have = ", ".join(str(d.sequence) for d in dumps) or "none"
                out.write(f"dumps: no record {show_what!r} (records: {have}; or all, runtime)\n")
                return 2
            for d in chosen:
                show(d, out)
    elif not save_to and not do_clear:
        list_dumps(esp, dumps, log, out)
    if save_to:
        status = save(dumps, log, save_to, out)
    if do_clear and status == 0:
        status = clear(esp, dumps, log, yes, ask, out)
    if status == 0 and any(not d.record.ok for d in dumps):
        bad = [f"{d.sequence} ({d.record.problem})" for d in dumps if not d.record.ok]
        out.write(f"dumps: {len(bad)} record(s) torn or corrupt: {'; '.join(bad)}\n")
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.media.dumps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a block device (/dev/sdX) or a disk image file")
    p.add_argument("--show", default="", metavar="N|all|runtime",
                   help="print record N, all of them, or the runtime log")
    p.add_argument("--save", default="", metavar="DIR", help="copy the records and the runtime log into DIR")
    p.add_argument("--clear", action="store_true", help="delete the records and the runtime log (asks first)")
    p.add_argument("--yes", action="store_true", help="with --clear: do not ask")
    p.add_argument("--send", default="", metavar="DSN", help="send the unsent records to a Sentry-protocol tracker")
    p.add_argument("--send-ca", default=None, metavar="PEM", help="with --send: CA certificates for its TLS")
    args = p.parse_args(argv)
    try:
        return run(args.source, args.show, args.save, args.clear, args.yes, send_to=args.send,
                   ca_file=args.send_ca)
    except espfs.EspError as e:
        print(f"dumps: {e}")
        return 2
    except KeyboardInterrupt:
        print("\ndumps: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
