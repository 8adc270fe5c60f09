"""Starting and stopping the real servers the tests run (Bugsink, chronyd, rsyslogd,
dnsmasq): each with its output in a log file of its own, stopped politely, then not."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path


def spawn(argv: list[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
          ) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=out, stderr=out, env=env, cwd=cwd)


def stop(process: subprocess.Popen[bytes] | None, seconds: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def ended(process: subprocess.Popen[bytes], log: Path) -> str:
    """"" while it runs, else what its log says of its end."""
    if process.poll() is None:
        return ""
    return f"{Path(process.args[0] if isinstance(process.args, list) else str(process.args)).name} ended " \
           f"(status {process.returncode}): {log.read_text(errors='replace')[-2000:]}"
