"""A small local fake of the Confluent Schema Registry REST API (the routes we use).

POST /subjects/{subject}/versions registers (identical schemas share one id, as in the
real registry); GET /schemas/ids/{id} returns a schema. Runs in a thread on loopback.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeRegistry:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.fail_next: list[int] = []  # HTTP statuses to answer before behaving
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if registry.fail_next:
                    self._send(registry.fail_next.pop(0), {"error_code": 50001})
                    return
                parts = self.path.strip("/").split("/")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                    self._send(404, {"error_code": 404, "message": "not found"})
                    return
                schema = body.get("schema")
                try:
                    json.loads(schema)
                except (TypeError, ValueError):
                    self._send(422, {"error_code": 42201, "message": "Invalid schema"})
                    return
                sid = registry.ids.setdefault(schema, len(registry.ids) + 1)
                registry.schemas[sid] = schema
                registry.subjects.setdefault(parts[1], [])
                if sid not in registry.subjects[parts[1]]:
                    registry.subjects[parts[1]].append(sid)
                self._send(200, {"id": sid})

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                    sid = int(parts[2])
                    if sid in registry.schemas:
                        self._send(200, {"schema": registry.schemas[sid]})
                        return
                self._send(404, {"error_code": 40403, "message": "Schema not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
