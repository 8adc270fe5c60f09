"""An HTTP server on the loopback that answers crash reports as trackers do, and as
broken ones do (unit tests; the QEMU tests use a real Bugsink)."""

from __future__ import annotations

import http.client
import http.server
import threading
from typing import Any

from appliance.report import dsn as dsns


class Tracker:
    """An HTTP server on the loopback that answers as told: ``mode`` is ok, 429, 400, 500,
    garbage, huge or silent (for ``silence`` seconds, then it hangs up); what it received
    is kept. With ``upstream`` (a real tracker's port), "ok" passes the request on to it
    and its answer back."""

    def __init__(self, upstream: int = 0) -> None:
        self.mode = "ok"
        self.upstream = upstream
        self.silence = 5.0
        self.rate_limit = 120
        self.received: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        tracker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                tracker.received.append(body)
                tracker.headers.append(dict(self.headers))
                mode = tracker.mode
                if mode == "garbage":
                    self.wfile.write(b"\x00\xffnot http at all\r\n\r\n")
                    return
                if mode == "silent":
                    threading.Event().wait(tracker.silence)
                    return
                if mode == "ok" and tracker.upstream:
                    conn = http.client.HTTPConnection("127.0.0.1", tracker.upstream, timeout=30)
                    conn.request("POST", self.path, body, {k: v for k, v in self.headers.items()
                                                           if k.lower() not in ("host", "connection")})
                    answer = conn.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    conn.close()
                    return
                status = {"ok": 200, "huge": 200, "429": 429, "400": 400, "500": 500}[mode]
                self.send_response(status)
                if mode == "429":
                    self.send_header("X-Sentry-Rate-Limits", f"{tracker.rate_limit}:error:organization")
                self.end_headers()
                if mode == "huge":
                    self.wfile.write(b"x" * (8 << 20))
                else:
                    self.wfile.write(b'{"detail": "project is disabled"}' if mode == "400" else b'{"id": "1"}')

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.dsn = dsns.parse(f"http://pubkey@127.0.0.1:{self.server.server_address[1]}/9")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
