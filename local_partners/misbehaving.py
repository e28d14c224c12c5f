"""A local HTTP server that misbehaves the ways a partner can, to prove the partner client's bounds
(issue 7, item 7): an answer far too large, an answer trickled a byte at a time.

Standard library only, no Django. Every request (any method, any path) gets the server's one
behaviour; the request body is read first, so the client always finishes sending.

    with MisbehavingServer("huge", size=200 * 1024 * 1024) as server:
        requests.post(server.url + "/lists/x", json={})
"""

from __future__ import annotations

import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer

BEHAVIOURS = ("huge", "huge_declared", "gzip_bomb", "trickle_body", "trickle_unframed", "trickle_headers")
MIB = 1024 * 1024


class MisbehavingServer:
    """Serves one behaviour on 127.0.0.1 (port 0: a free one):

    * ``huge``: a 200 answer of ``size`` bytes of JSON-looking text, without Content-Length
      (ended by closing the connection), written as fast as the client reads;
    * ``huge_declared``: the same with its Content-Length;
    * ``gzip_bomb``: ``size`` bytes of JSON that gzip to a small body (Content-Encoding: gzip);
    * ``trickle_body``: headers at once, then a body of ``size`` bytes, one every ``interval`` s;
    * ``trickle_unframed``: the same without Content-Length (the body ends when the connection does);
    * ``trickle_headers``: the first ``size`` bytes of the status line and headers one every
      ``interval`` seconds, then the rest of a small answer at once.

    The trickles never leave the client silent for ``interval`` or longer, so a read timeout
    above it never trips: only a deadline on the whole call ends them.
    """

    def __init__(self, behaviour: str, *, size: int = 200 * MIB, interval: float = 1.0) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {', '.join(BEHAVIOURS)}")
        self.behaviour, self.size, self.interval = behaviour, size, interval
        self.bytes_sent = 0  # body bytes written, all requests together
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._gzipped = _gzip_bomb(size) if behaviour == "gzip_bomb" else b""

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> MisbehavingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _sent(self, count: int) -> None:
        with self._lock:
            self.bytes_sent += count

    def answer(self, handler: _Handler) -> None:
        write = handler.wfile.write
        if self.behaviour == "trickle_headers":
            answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            if self._trickle(handler, answer[: self.size]):
                write(answer[self.size :])
            return
        if self.behaviour == "gzip_bomb":
            head = f"Content-Encoding: gzip\r\nContent-Length: {len(self._gzipped)}\r\n"
            write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{head}\r\n".encode())
            write(self._gzipped)
            self._sent(len(self._gzipped))
            return
        length = f"Content-Length: {self.size}\r\n" if self.behaviour in ("huge_declared", "trickle_body") else ""
        write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n".encode())
        if self.behaviour in ("trickle_body", "trickle_unframed"):
            self._trickle(handler, b"x" * self.size)
            return
        chunk = _json_text(MIB)
        left = self.size
        while left > 0 and not self._stopping.is_set():
            piece = chunk[: min(left, MIB)]
            write(piece)
            self._sent(len(piece))
            left -= len(piece)

    def _trickle(self, handler: _Handler, data: bytes) -> bool:
        """Write data a byte every `interval` seconds; False if the server stopped first."""
        for i in range(len(data)):
            if self._stopping.wait(self.interval if i else 0):
                return False
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
            self._sent(1)
        return True


def _gzip_bomb(size: int) -> bytes:
    """`size` bytes of _json_text gzipped, compressed a MiB at a time (the whole is never held)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    parts = [compressor.compress(_json_text(min(size, MIB)))]
    filler = b"x" * MIB
    for offset in range(MIB, size, MIB):
        parts.append(compressor.compress(filler[: min(MIB, size - offset)]))
    parts.append(compressor.flush())
    return b"".join(parts)


def _json_text(size: int) -> bytes:
    """`size` bytes that start like a JSON object and never end it."""
    head = b'{"members": "'
    return head + b"x" * max(0, size - len(head))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], app: MisbehavingServer) -> None:
        self.app = app
        super().__init__(address, handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # no reverse DNS lookup of the host name
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up is the expected end of every behaviour here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # GUIDE: without TCP_NODELAY, delayed ACKs stall small writes
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.close_connection = True
        try:
            self.server.app.answer(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what the bounds are for

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
