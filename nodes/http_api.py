"""``zq http``: a small JSON-over-HTTP admin API in front of a cluster (stdlib only).

    GET  /status                          the ventilator's and the sink's stats
    GET  /tasks?state=&queue=&name=&since=&limit=&offset=   list_tasks
    GET  /tasks/ID                        show_task           (404 if unknown)
    GET  /tasks/ID/result                 a retained result   (404 if none)
    POST /tasks  {"name", "params", "queue"?, "priority"?, "key"?, "delay"?}  submit_by_name
    POST /tasks/ID/cancel | /tasks/ID/requeue
    DELETE /tasks/ID                      forget
    POST /queues/Q/pause | /queues/Q/resume
    POST /names/N/disable | /names/N/enable

It is a client of the cluster (with ``--keys`` if the cluster is secured).  HTTP
itself carries no authentication, so it binds loopback only unless ``--insecure``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse

import zq

log = logging.getLogger("zq.http")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


class Handler(BaseHTTPRequestHandler):
    client: zq.Client  # set on the subclass made by serve()

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > 1 << 20:
            raise ValueError("request body over 1 MiB")
        data = json.loads(self.rfile.read(n) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        c = self.client
        try:
            if method == "GET" and parts == ["status"]:
                return self._reply(200, c.stats())
            if method == "GET" and parts == ["tasks"]:
                kw: dict = {k: q[k] for k in ("state", "queue", "name") if k in q}
                if "since" in q:
                    kw["since"] = float(q["since"])
                kw["limit"] = int(q.get("limit", 100))
                kw["offset"] = int(q.get("offset", 0))
                return self._reply(200, c.list_tasks(**kw))
            if method == "GET" and len(parts) == 2 and parts[0] == "tasks":
                return self._reply(200, c.show_task(parts[1]))
            if method == "GET" and len(parts) == 3 and parts[0] == "tasks" and parts[2] == "result":
                r = c.get_result(parts[1])
                return self._reply(200, {"task_id": r.task_id, "state": r.state.value,
                                         "value": _jsonable(r.value) if r.ok else None,
                                         "error": r.error.__dict__ if r.error else None,
                                         "attempts": r.attempts, "worker": r.worker,
                                         "run_time": r.run_time})
            if method == "POST" and parts == ["tasks"]:
                b = self._body()
                opts = {k: b[k] for k in ("queue", "priority", "key", "delay", "retries", "timeout")
                        if k in b}
                fut = c.submit_by_name(str(b.get("name")), b.get("params"), retain_result=True, **opts)
                return self._reply(202, {"task_id": fut.task_id})
            if method == "POST" and len(parts) == 3 and parts[0] == "tasks" and parts[2] in ("cancel", "requeue"):
                if parts[2] == "cancel":
                    return self._reply(200, {"cancelled": c.cancel(parts[1])})
                return self._reply(202, {"task_id": c.requeue(parts[1])})
            if method == "DELETE" and len(parts) == 2 and parts[0] == "tasks":
                return self._reply(200, {"forgotten": c.forget(parts[1])})
            if method == "POST" and len(parts) == 3 and parts[0] == "queues" and parts[2] in ("pause", "resume"):
                n = c.pause(parts[1]) if parts[2] == "pause" else c.resume(parts[1])
                return self._reply(200, {"queue": parts[1], "waiting": n})
            if method == "POST" and len(parts) == 3 and parts[0] == "names" and parts[2] in ("enable", "disable"):
                (c.disable_task if parts[2] == "disable" else c.enable_task)(parts[1])
                return self._reply(200, {"name": parts[1], "enabled": parts[2] == "enable"})
            return self._reply(404, {"error": f"no route {method} {url.path}"})
        except KeyError as exc:
            return self._reply(404, {"error": str(exc).strip("'\"")})
        except (TypeError, ValueError, json.JSONDecodeError) as exc:
            return self._reply(400, {"error": str(exc)})
        except (zq.ZqError, TimeoutError) as exc:
            return self._reply(502, {"error": str(exc)})

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")


def serve(client: zq.Client, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"client": client})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


_HOST = re.compile(r"^(127\.|localhost$|::1$)")


def run(client: zq.Client, host: str, port: int, insecure: bool, stop: threading.Event,
        ready: Optional[Any] = None) -> None:
    if not _HOST.match(host) and not insecure:
        raise zq.InsecureBindError(f"refusing to serve the HTTP API on {host}: it has no authentication; "
                                   "use --insecure to do it anyway")
    server = serve(client, host, port)
    if ready is not None:
        ready(f"http://{server.server_address[0]}:{server.server_address[1]}")
    t = threading.Thread(target=server.serve_forever, name="zq-http", daemon=True)
    t.start()
    stop.wait()
    server.shutdown()
    server.server_close()
