"""Python's tracebacks and faulthandler's dumps, read back from a log's lines.

Total and bounded: any bytes give an answer (perhaps empty), lines are cut at
``MAX_LINE``, and every list is capped, so a log full of garbage or a recursion a
thousand frames deep costs bounded memory and time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

MAX_LINE = 4096
MAX_FRAMES = 64  # per stack: the newest are kept (where it died)
MAX_CHAIN = 8  # exceptions in one chain (its cause, its context)
MAX_THREADS = 32
TAGS = ("core: ", "init: ")  # the runtime log's line sources

_FRAME = re.compile(r'  File "(?P<file>[^"]*)", line (?P<line>\d+)(?:, in (?P<func>.*))?$')
_FAULT_FRAME = re.compile(r'  File "(?P<file>[^"]*)", line (?P<line>\d+|\?\?\?) in (?P<func>.*)$')
_EXCEPTION = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?:: (?P<value>.*))?$")
_THREAD = re.compile(r"(?P<current>Current thread|Thread) (?P<id>0x[0-9a-f]+) \(most recent call first\):$")
_CHAINS = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


class Frame(NamedTuple):
    filename: str
    lineno: int  # 0: unknown
    function: str
    source: str = ""  # the line as the traceback printed it, stripped


class PyException(NamedTuple):
    type: str
    value: str
    frames: tuple[Frame, ...]  # oldest first, as Sentry wants them


class Thread(NamedTuple):
    id: str
    current: bool
    frames: tuple[Frame, ...]  # oldest first


class FaultDump(NamedTuple):
    error: str  # "Segmentation fault", "Aborted", "" for a dump without one (a watchdog's)
    threads: tuple[Thread, ...]


def lines_of(data: bytes) -> list[str]:
    """The log's lines, each without its source tag, cut at MAX_LINE."""
    out = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw[:MAX_LINE]
        for tag in TAGS:
            if line.startswith(tag):
                line = line[len(tag):]
                break
        out.append(line)
    return out


def _newest(frames: list[Frame]) -> tuple[Frame, ...]:
    return tuple(frames[-MAX_FRAMES:])


def _source(line: str) -> str | None:
    """The source line a traceback prints under a frame, or None for a caret line."""
    text = line.strip()
    if not text or set(text) <= set("^~ "):
        return None
    return text


def last_exception_chain(lines: Iterable[str]) -> list[PyException]:
    """The last chain of exceptions in the lines (cause first, the one that ended it last);
    [] when there is none."""
    chain: list[PyException] = []
    frames: list[Frame] | None = None  # inside a traceback
    chained = False  # a chain marker was seen since the last exception
    for line in lines:
        if line == "Traceback (most recent call last):":
            if not chained:
                chain = []
            frames, chained = [], False
            continue
        if line in _CHAINS:
            chained = bool(chain)
            continue
        if frames is None:
            if line.strip() and chained and not line.startswith(" "):
                chained = False  # text between a marker and a traceback: not a chain after all
            continue
        if m := _FRAME.match(line):
            frames.append(Frame(m["file"], int(m["line"][:9]), (m["func"] or "").strip()[:256]))
            if len(frames) > 2 * MAX_FRAMES:
                del frames[:MAX_FRAMES]
            continue
        if line.startswith("    ") and frames:
            source = _source(line)
            last = frames[-1]
            if source is not None and not last.source:
                frames[-1] = last._replace(source=source[:512])
            continue
        if line.startswith(" "):
            continue  # "[Previous line repeated 996 more times]", and the like
        if m := _EXCEPTION.match(line):
            chain.append(PyException(m["type"][:256], (m["value"] or "")[:2048], _newest(frames)))
            del chain[:-MAX_CHAIN]
        frames = None  # the traceback ended (with its exception, or with other text)
    return chain


def fault_dumps(lines: Iterable[str]) -> list[FaultDump]:
    """Every faulthandler dump in the lines, in order: the fatal error, if any, and the
    threads with their frames."""
    dumps: list[FaultDump] = []
    error = ""
    threads: list[Thread] = []
    current: tuple[str, bool, list[Frame]] | None = None

    def end_thread() -> None:
        nonlocal current
        if current is not None and len(threads) < MAX_THREADS:
            frames = current[2]
            frames.reverse()  # faulthandler prints the newest first
            threads.append(Thread(current[0], current[1], _newest(frames)))
        current = None

    def end_dump() -> None:
        nonlocal error, threads
        end_thread()
        if threads or error:
            dumps.append(FaultDump(error, tuple(threads)))
            del dumps[:-MAX_THREADS]
        error, threads = "", []

    for line in lines:
        if line.startswith("Fatal Python error: "):
            end_dump()
            error = line[len("Fatal Python error: "):][:512]
            continue
        if (m := _THREAD.match(line)) or line == "Stack (most recent call first):":
            end_thread()
            current = (m["id"] if m else "", bool(m and m["current"] == "Current thread"), [])
            continue
        if current is not None:
            if fm := _FAULT_FRAME.match(line):
                frames = current[2]
                lineno = int(fm["line"][:9]) if fm["line"].isdigit() else 0
                frames.append(Frame(fm["file"], lineno, fm["func"].strip()[:256]))
                if len(frames) > 2 * MAX_FRAMES:
                    del frames[MAX_FRAMES:]  # the newest come first: keep those
                continue
            if line.strip() == "<no Python frame>":
                continue
            end_thread()
            if not line.strip():
                continue
            end_dump()
    end_dump()
    return dumps
