"""A real error tracker for the tests and the bench: Bugsink (PyPI ``bugsink``, on SQLite,
served by gunicorn on the host's loopback), set up from nothing in a folder.

``make deps`` installs it into a virtual environment of its own (``TRACKER_VENV``,
default ``.venv-tracker``): its Django must not meet the harness's packages. The
tracker's migrations take about 10 s; its server is ready in about 1 s, and can be
stopped and started again on the same port (a tracker that is away for a while).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from appliance.harness import daemon

DEFAULT_VENV = Path(__file__).resolve().parents[3] / ".venv-tracker"
API = "/api/canonical/0"


class TrackerError(Exception):
    pass


def venv() -> Path:
    return Path(os.environ.get("TRACKER_VENV") or DEFAULT_VENV).resolve()  # servers run in folders of their own


def available() -> str:
    """Why Bugsink cannot run here, or "" when it can."""
    if not (venv() / "bin" / "bugsink-manage").exists():
        return f"Bugsink is not installed in {venv()} (make deps installs it)"
    return ""


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, seconds: float) -> bool:
    """Whether ``process`` listens on the loopback's TCP ``port`` within ``seconds``;
    TrackerError if it ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            why = daemon.ended(process, log)
            if why:
                raise TrackerError(why) from None
            time.sleep(0.1)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONF = '''
from bugsink.settings.default import *  # noqa
SECRET_KEY = {secret!r}
DATABASES["default"]["NAME"] = {db!r}
DATABASES["snappea"]["NAME"] = {snappea!r}
TIME_ZONE = "UTC"
SNAPPEA = {{"TASK_ALWAYS_EAGER": True}}
EMAIL_BACKEND = "bugsink.email_backends.QuietConsoleEmailBackend"
BUGSINK = {{"BASE_URL": "http://127.0.0.1:{port}", "SINGLE_USER": True, "SINGLE_TEAM": True,
            "USER_REGISTRATION": "CB_NOBODY", "PHONEHOME": False}}
'''


class Bugsink:
    """One Bugsink with one project; ``dsn`` is that project's (host 127.0.0.1)."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.dsn = ""
        self.project = ""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bugsink_conf.py").write_text(CONF.format(
            secret=secrets.token_hex(32), db=str(folder / "db.sqlite3"), snappea=str(folder / "snappea.sqlite3"),
            port=self.port))
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bugsink_conf", "PYTHONPATH": str(folder)}

    def _manage(self, *args: str) -> str:
        done = subprocess.run([str(venv() / "bin" / "bugsink-manage"), *args], env=self.env, cwd=self.folder,
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode:
            raise TrackerError(f"bugsink-manage {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def set_up(self) -> Bugsink:
        """Databases, a token, the server, a team and a project: ready for events."""
        self._manage("migrate", "-v0")
        self._manage("migrate", "snappea", "--database=snappea", "-v0")
        self.token = self._manage("create_auth_token").strip().splitlines()[-1]
        self.start()
        team = self.api("POST", "/teams/", {"name": "fleet"})
        self.project = str(self.api("POST", "/projects/", {"name": "appliances", "team": team["id"]})["id"])
        listed = self.api("GET", "/projects/")["results"]
        self.dsn = next(p["dsn"] for p in listed if str(p["id"]) == self.project)
        return self

    def start(self) -> None:
        log = self.folder / "gunicorn.log"
        self.process = daemon.spawn([str(venv() / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}",
                                     "--workers", "2", "--timeout", "60", "bugsink.wsgi"], log, self.env, self.folder)
        if not wait_listening(self.port, self.process, log, 60):
            raise TrackerError("Bugsink did not listen within 60 s")

    def stop(self) -> None:
        daemon.stop(self.process, 20)
        self.process = None

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{API}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def events(self) -> list[dict[str, Any]]:
        """Every stored event's data (as sent), oldest first."""
        out = []
        for issue in self.api("GET", f"/issues/?project={self.project}")["results"]:
            for listed in self.api("GET", f"/events/?issue={issue['id']}")["results"]:
                out.append(self.api("GET", f"/events/{listed['id']}/")["data"])
        return sorted(out, key=lambda e: str(e.get("timestamp", "")))

    def crash_events(self) -> list[dict[str, Any]]:
        """The stored events of crash records, without the update channel's outcomes
        (``kind: update``) that a machine with a channel sends too."""
        return [e for e in self.events() if (e.get("tags") or {}).get("kind") != "update"]

    def guest_dsn(self, address: str) -> str:
        """The DSN as a machine reaches the tracker at ``address`` (host:port in the guest)."""
        key = self.dsn.split("//", 1)[1].split("@", 1)[0]
        return f"http://{key}@{address}/{self.project}"
