"""What the local partner servers share: a threaded HTTP server run in the background (tests) or in the foreground
(`python -m local_partners`), and a handler answering JSON over keep-alive connections."""

from __future__ import annotations

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class LocalServer:
    """Owns the HTTP server; `self._httpd.app` is the subclass, which the handler dispatches to."""

    thread_name = "local-partner"

    def _listen(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self._thread: threading.Thread | None = None
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self  # type: ignore[attr-defined]

    @property
    def root_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        if ipaddress.ip_address(host).is_unspecified:
            host = "127.0.0.1"  # bound to all interfaces: loopback reaches it
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class JSONHandler(BaseHTTPRequestHandler):
    """Reads the body, asks answer() for (status, body, headers), writes it as JSON with a Content-Length."""

    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    disable_nagle_algorithm = True  # no delayed-ACK stalls for a keep-alive client (GUIDE.md)

    def answer(self, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw = self.rfile.read(length) if length > 0 else b""
        status, body, headers = self.answer(raw)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)
