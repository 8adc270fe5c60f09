"""A Sentry DSN: ``https://<public key>@<host>[:port][/<prefix>]/<project id>``."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit


class Dsn(NamedTuple):
    scheme: str  # https | http
    key: str
    host: str
    port: int | None
    prefix: str  # a path before the project id, "" for most trackers
    project: str
    text: str  # as given

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"{host}:{self.port}" if self.port else host

    @property
    def envelope_url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.prefix}/api/{self.project}/envelope/"

    def auth(self, client: str) -> str:
        """The X-Sentry-Auth header's value."""
        return f"Sentry sentry_version=7, sentry_key={self.key}, sentry_client={client}"


def parse(text: str) -> Dsn:
    """The DSN, or ValueError saying what is wrong with it."""
    text = text.strip()
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as e:
        raise ValueError(f"not a DSN: {e}") from None
    if url.scheme not in ("https", "http"):
        raise ValueError("a DSN starts with https:// (or http:// for a tracker on the local network)")
    if not url.username:
        raise ValueError("a DSN names the project's public key before the host: https://<key>@<host>/<project>")
    if url.password:
        raise ValueError("a DSN carries the public key only (the secret key is not needed and must not be baked in)")
    if not url.hostname:
        raise ValueError("a DSN names the tracker's host")
    if url.query or url.fragment:
        raise ValueError("a DSN has no query or fragment")
    prefix, _, project = url.path.rstrip("/").rpartition("/")
    if not project.isdigit():
        raise ValueError("a DSN ends with the project's number: https://<key>@<host>/<project>")
    if not all(c.isalnum() or c in "-_" for c in url.username):
        raise ValueError("the DSN's public key has characters a key does not have")
    return Dsn(url.scheme, url.username, url.hostname, port, prefix, project, text)
