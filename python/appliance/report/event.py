"""A history record as one Sentry event, and the envelope that carries it.

The event's id is the record's own (``event-id`` in its header, made when it was
archived), so a record sent twice (a cut before the mark, a stick sent from another
machine) is stored once. No frame locals are ever sent: the log holds none.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from appliance.esp import records
from appliance.report import tracebacks
from appliance.report.dsn import Dsn
from appliance.report.tracebacks import Frame

LOG_TAIL = 8 * 1024  # the log's tail in the event's body (trackers differ on attachments)
CONTEXT_LINES = 5  # source lines around a frame's line, when the image has the file
KERNEL_LINES = 200
SIGNALS = ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL", "SIGKILL", "SIGTERM")

# (path, line number) -> (lines before, the line, lines after), or None
SourceReader = Callable[[str, int], "tuple[list[str], str, list[str]] | None"]


class Machine(NamedTuple):
    """What the sending machine says of itself in every event."""
    release: str  # the image version
    build_id: str
    host: str
    machine_id: str
    core_dir: str = "/usr/lib/appliance/core"  # frames under it are the core's own (in_app)
    client: str = "appliance"


def event_id(record: records.Record, raw_header: bytes = b"") -> str:
    """The record's event id: its own, else one derived from its checksum (records made
    before ids were given): the same record gives the same id on every machine."""
    given = record.meta.get("event-id", "")
    if len(given) == 32 and all(c in "0123456789abcdef" for c in given):
        return given
    basis = record.meta.get("sha256", "") or hashlib.sha256(raw_header or record.payload).hexdigest()
    return hashlib.sha256(("appliance-record " + basis).encode()).hexdigest()[:32]


def read_source(allowed: tuple[str, ...], limit: int = 1 << 20) -> SourceReader:
    """A SourceReader for files under ``allowed`` (the image's own), each at most ``limit`` bytes."""
    def reader(path: str, lineno: int) -> tuple[list[str], str, list[str]] | None:
        if lineno < 1 or not path.startswith(allowed) or "/../" in path:
            return None
        try:
            with open(path, "rb") as f:
                lines = f.read(limit).decode("utf-8", "replace").splitlines()
        except OSError:
            return None
        if lineno > len(lines):
            return None
        i = lineno - 1
        return ([line[:512] for line in lines[max(0, i - CONTEXT_LINES):i]], lines[i][:512],
                [line[:512] for line in lines[i + 1:i + 1 + CONTEXT_LINES]])
    return reader


def _frame(f: Frame, machine: Machine, source: SourceReader | None) -> dict[str, Any]:
    out: dict[str, Any] = {"filename": f.filename, "abs_path": f.filename, "function": f.function or "?",
                           "in_app": f.filename.startswith(machine.core_dir + "/")}
    if f.lineno:
        out["lineno"] = f.lineno
    context = source(f.filename, f.lineno) if source else None
    if context is not None and (not f.source or context[1].strip() == f.source):
        out["pre_context"], out["context_line"], out["post_context"] = context
    elif f.source:
        out["context_line"] = f.source
    return out


def _stack(frames: tuple[Frame, ...], machine: Machine, source: SourceReader | None) -> dict[str, Any]:
    return {"frames": [_frame(f, machine, source) for f in frames]}


def _tail(payload: bytes, limit: int = LOG_TAIL) -> str:
    text = payload[-limit:].decode("utf-8", "replace")
    return text if len(payload) <= limit else "[...]" + text.partition("\n")[2]


def _signal(ended: str) -> str:
    return next((s for s in SIGNALS if s in ended), "")


def build(record: records.Record, machine: Machine, source: SourceReader | None = None,
          name: str = "") -> dict[str, Any]:
    """The Sentry event for one history record (``name``: its file name, for the tags)."""
    meta = record.meta
    kind = record.kind
    ended = meta.get("ended", "")
    boot_ended = meta.get("boot-ended", "")
    lines = tracebacks.lines_of(record.payload)
    release, build_id = image_of(meta, machine)
    tags = {"kind": kind, "build_id": build_id, "machine_id": machine.machine_id,
            "boot_ended": boot_ended[:200], "secure_boot": meta.get("secure-boot", "")[:200]}
    event: dict[str, Any] = {
        "event_id": event_id(record),
        "platform": "python",
        "level": "fatal",
        "logger": f"appliance.{kind}",
        "release": release,
        "server_name": machine.host,
        "sdk": {"name": machine.client.partition("/")[0], "version": machine.client.partition("/")[2] or "0"},
        "contexts": {"os": {"name": "Linux"}, "appliance": {k: v for k, v in meta.items() if k != "sha256"}},
    }
    if ts := _crash_time(meta):
        event["timestamp"] = ts
    values: list[dict[str, Any]] = []
    message = ""
    if kind.startswith("kernel-"):
        kernel = [line for line in lines if line.strip()][-KERNEL_LINES:]
        panic = next((line for line in reversed(kernel) if "Kernel panic" in line), "")
        message = f"{meta.get('reason', kind)}: {panic.strip()}" if panic else meta.get("reason", kind)
        event["extra"] = {"kernel_log": "\n".join(kernel)}
        event["platform"] = "native"
    else:
        chain = tracebacks.last_exception_chain(lines)
        dumps = tracebacks.fault_dumps(lines)
        for exc in chain:
            values.append({"type": exc.type, "value": exc.value,
                           "stacktrace": _stack(exc.frames, machine, source),
                           "mechanism": {"type": kind, "handled": False}})
        if dumps:
            dump = dumps[-1]
            event["threads"] = {"values": [
                {"id": t.id, "current": t.current, "crashed": t.current,
                 "name": "current thread" if t.current else f"thread {t.id}",
                 "stacktrace": _stack(t.frames, machine, source)} for t in dump.threads]}
            crashed = next((t for t in dump.threads if t.current), None)
            if not chain or _signal(ended):
                sig = _signal(ended) or "Fatal Python error"
                values.append({"type": sig, "value": dump.error or ended or "faulthandler dump",
                               "mechanism": {"type": "signal", "handled": False},
                               **({"stacktrace": _stack(crashed.frames, machine, source)} if crashed else {})})
        if not values:
            message = _summary(kind, ended, boot_ended, lines)
        event["extra"] = {"log_tail": _tail(record.payload)}
    if values:
        event["exception"] = {"values": values}
    if message:
        event["message"] = {"formatted": message[:8192]}
    event["tags"] = {k: v for k, v in tags.items() if v}
    if name:
        event["extra"]["record"] = name
    return event


def image_of(meta: Mapping[str, str], machine: Machine) -> tuple[str, str]:
    """(version, build id) of the image that crashed: the record's own ``image:``
    ("1.4 (3f2a0c1b9d8e)"), which an update may have replaced since; else this machine's."""
    version, _, rest = meta.get("image", "").partition(" (")
    build = rest.rstrip(")")
    if not version or version == "unknown":
        return machine.release, machine.build_id
    return version[:200], (build if build and build != "no build id" else "")[:64]


def _summary(kind: str, ended: str, boot_ended: str, lines: list[str]) -> str:
    if kind == "runtime-log":
        return f"core {ended}" if ended else "the core's log"
    if kind == "init-failure":
        return next((line for line in lines if line.strip()), "a failure of the init")[:512]
    if kind == "reset":
        return f"previous boot ended: {boot_ended}"
    if kind == "rollback":
        return next((line for line in lines if line.strip()), "an update was rolled back")[:512]
    return f"{kind}: {boot_ended or ended}"


def _crash_time(meta: Mapping[str, str]) -> float | None:
    for key in ("ended-at", "time"):
        try:
            value = float(meta.get(key, ""))
        except ValueError:
            continue
        if 946684800 <= value < 4102444800:  # 2000 .. 2100: a clock that was set
            return value
    return None


def envelope(event: dict[str, Any], dsn: Dsn, now: float | None = None) -> bytes:
    """The envelope that carries ``event``: a header, then one item."""
    sent_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    header = {"event_id": event["event_id"], "dsn": dsn.text, "sent_at": sent_at}
    item = {"type": "event", "length": len(body), "content_type": "application/json"}
    return b"%s\n%s\n%s\n" % (json.dumps(header).encode(), json.dumps(item).encode(), body)
