"""Run an http.server on a daemon thread: the shared part of the IMDS emulator and the proxy."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import TypeVar

T = TypeVar("T", bound="Background")


class Background:
    """Serve ``self.server`` on a thread between ``start()`` and ``stop()`` (or ``with``)."""

    def __init__(self, server: ThreadingHTTPServer):
        self.server = server
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self: T) -> T:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self: T) -> T:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
