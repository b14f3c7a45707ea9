"""A partner API stub on 127.0.0.1 that responds with a chosen status and its own request ID."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PartnerStub:
    """Serve ``/status/<code>`` and ``/echo`` (returns the request headers it received)."""

    def __init__(self, request_id_header: str = "x-request-id") -> None:
        self.received: list[dict[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                headers = {key.lower(): value for key, value in self.headers.items()}
                stub.received.append(headers)
                status = 200
                if self.path.startswith("/status/"):
                    status = int(self.path.split("/")[2].split("?")[0])
                body = json.dumps(headers).encode()
                self.send_response(status)
                self.send_header(request_id_header, f"prt_{len(stub.received):04d}")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
