"""Kernel panics and oopses kept by pstore across the reboot (efi-pstore: in the
firmware's variables), turned into history records and then erased.

Each dump is split by the kernel into parts (``Panic#1 Part1`` is the newest text,
higher parts are older), one file each in /sys/fs/pstore; ``collect`` puts the parts
of one dump back together in reading order. Files of other kinds (pmsg, console,
ftrace, where a backend offers them) become one record each.
"""

from __future__ import annotations

import os
from typing import NamedTuple

PSTORE_DIR = "/sys/fs/pstore"
MAX_PARTS = 1000  # efi-pstore splits a dump into parts of about 1 KiB: a few dozen at most
MAX_FILES = 256  # a full variable store holds far fewer


class Dump(NamedTuple):
    kind: str  # a history record kind: kernel-panic, kernel-oops, pstore-pmsg, ...
    reason: str  # Panic, Oops, ... as the kernel named it
    payload: bytes
    files: tuple[str, ...]  # the pstore files it came from (unlinking one erases it)


def _kind(word: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in word.lower()).strip("-")
    return clean or "unknown"


def _part_header(data: bytes) -> tuple[str, int, int, bytes] | None:
    """A dump's first line ``Panic#2 Part1`` (efi-pstore's): (reason, count, part, the text
    after that line), or None when it has no such line."""
    line, newline, body = data.partition(b"\n")
    head, sep, part = line.partition(b" Part")
    reason, hash_sign, count = head.partition(b"#")
    if (newline and sep and hash_sign and reason.replace(b"_", b"").isalnum() and count.isdigit()
            and part.isdigit() and len(count) <= 9 and len(part) <= 4 and 1 <= int(part) <= MAX_PARTS):
        return reason.decode(), int(count), int(part), body
    return None


def collect(directory: str = PSTORE_DIR) -> tuple[list[Dump], list[str]]:
    """(the dumps in pstore, problems reading it). No pstore mounted: nothing."""
    problems: list[str] = []
    try:
        names = sorted(os.listdir(directory))[:MAX_FILES]
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"cannot list {directory}: {e}"]
    parts: dict[tuple[str, int], list[tuple[int, bytes, str]]] = {}
    dumps: list[Dump] = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except OSError as e:
            problems.append(f"cannot read {path}: {e}")
            continue
        if name.startswith("dmesg-"):
            parsed = _part_header(data)
            if parsed:
                reason, count, part, body = parsed
                parts.setdefault((reason, count), []).append((part, body, path))
                continue
            dumps.append(Dump("kernel-dump", "dump", data, (path,)))
            continue
        backend_kind = name.split("-", 1)[0]
        dumps.append(Dump(f"pstore-{_kind(backend_kind)}", backend_kind, data, (path,)))
    for (reason, count), pieces in sorted(parts.items(), key=lambda kv: kv[0][1]):
        pieces.sort(key=lambda p: -p[0])  # the highest part is the oldest text
        numbers = [p[0] for p in pieces]
        header = f"{reason}#{count}, parts {min(numbers)}-{max(numbers)} of the kernel log at the {reason.lower()}"
        missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
        if missing:
            listed = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            header += f" (parts {listed} missing)"
        text = header.encode() + b"\n" + b"".join(p[1] for p in pieces)
        dumps.insert(0, Dump(f"kernel-{_kind(reason)}", reason, text, tuple(p[2] for p in pieces)))
    return dumps, problems


def erase(dump: Dump) -> list[str]:
    """Remove the dump from pstore (and so from the firmware's variable store); problems."""
    problems = []
    for path in dump.files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"could not erase {path}: {e}")
    return problems
