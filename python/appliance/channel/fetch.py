"""The update checker's network: python-tuf's fetcher, bounded.

Every byte a channel sends is hostile until TUF has checked it, and even then it is only
as big as the metadata said. Here: one HTTP GET per file, no redirects (a static host
that moves its files says so with an error the machine shows), a timeout on every
connect and read, and the whole file within a deadline (``send.deadline``: a server that
drips a byte a second is cut off, not waited for). TUF's own ``download_file`` stops at
the length it expects. Standard library only (http.client, ssl).
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from urllib.parse import urlsplit

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from appliance.report.send import Deadline, deadline

CHUNK = 64 * 1024
READ_TIMEOUT = 20.0  # seconds for a connect or one read
FILE_SECONDS = 900.0  # one whole file (an image of 30 MiB at 35 KiB/s)


class BoundedFetcher(FetcherInterface):
    def __init__(self, ca_file: str | None = None, read_timeout: float = READ_TIMEOUT,
                 file_seconds: float = FILE_SECONDS, user_agent: str = "appliance") -> None:
        self.ca_file = ca_file
        self.read_timeout = read_timeout
        self.file_seconds = file_seconds
        self.user_agent = user_agent

    def _connection(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            import ssl
            context = ssl.create_default_context(cafile=self.ca_file)
            return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=self.read_timeout,
                                               context=context), path
        if parts.scheme != "http":
            raise exceptions.DownloadError(f"{url}: only http:// and https:// channels")
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.read_timeout), path

    def _fetch(self, url: str) -> Iterator[bytes]:
        with deadline(self.file_seconds):  # the alarm goes on while the caller reads the chunks
            conn, path = self._connection(url)
            try:
                conn.request("GET", path, headers={"User-Agent": self.user_agent, "Accept-Encoding": "identity"})
                response = conn.getresponse()
                if response.status != 200:
                    raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status} {response.reason[:80]}",
                                                       response.status)
                while chunk := response.read(CHUNK):
                    yield chunk
            except Deadline as e:
                raise exceptions.SlowRetrievalError(f"{url}: {e}") from None
            finally:
                conn.close()
