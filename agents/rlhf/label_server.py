"""A small local web page for collecting human feedback (``textgen-rl label``).

:class:`LabelSession` holds the items and the :class:`~agents.rlhf.data.FeedbackWriter`; it
validates every answer and appends it to the JSONL file *before* replying, so an acknowledged
answer is on disk. :class:`LabelServer` exposes it over HTTP with the standard library's
``ThreadingHTTPServer``, bound to a loopback address only.

HTTP API (JSON bodies, ``Content-Type: application/json``, at most 64 KiB)::

    GET  /                 the page (static/index.html, app.js, style.css)
    GET  /api/state        {"mode", "total", "done", "answered", "skipped", "remaining",
                            "finished", "can_undo", "item": {"id", "prompt", "completions"} | null}
    POST /api/answer       compare: {"id", "choice": 0|1}   (index of the better completion)
                           rate:    {"id", "score": 1..5}
                           rank:    {"id", "order": [best index, ..., worst index]}
    POST /api/skip         {"id"}
    POST /api/undo         {}    cancels the latest answer or skip of this session's items

Every successful POST returns the new state. Errors are ``{"error": "..."}`` with status 400
(malformed JSON, bad value), 404 (unknown item id), 409 (item already answered / nothing to
undo), 411 (no Content-Length), 413 (body over 64 KiB), 415 (not JSON) or 403 (a Host header
that is not the loopback address: DNS-rebinding protection); the feedback file is then untouched.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from text_envs.errors import ConfigError

from .data import FeedbackWriter
from .generate import MODES, LabelItem

__all__ = ["LabelSession", "LabelServer", "RequestError", "check_loopback_host", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 64 * 1024
RATING_SCALE = (1, 5)
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
LOOPBACK_HOSTS = {"127.0.0.1": socket.AF_INET, "localhost": socket.AF_INET, "::1": socket.AF_INET6}


class RequestError(Exception):
    """A rejected request: HTTP status and a message for the JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_loopback_host(host: str) -> tuple[str, int]:
    """Return ``(bind_address, address_family)`` for a loopback ``host``; anything else is refused."""
    if host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"host={host!r}: the labelling server only binds a loopback address "
            f"({', '.join(LOOPBACK_HOSTS)}); it has no authentication, so it must not be reachable from other machines"
        )
    return ("127.0.0.1" if host == "localhost" else host), LOOPBACK_HOSTS[host]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class LabelSession:
    """The labelling state: items, mode and the feedback file (thread-safe)."""

    def __init__(
        self,
        items: Sequence[LabelItem],
        writer: FeedbackWriter,
        *,
        mode: str = "compare",
        meta: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise ConfigError("item ids must be unique")
        for item in items:
            need = {"compare": 2, "rate": 1}.get(mode)
            if need is not None and len(item.completions) != need:
                raise ConfigError(f"item {item.id}: mode {mode} needs {need} completion(s), got {len(item.completions)}")
            if mode == "rank" and len(item.completions) < 2:
                raise ConfigError(f"item {item.id}: mode rank needs at least 2 completions")
        self.items = list(items)
        self.by_id = {item.id: item for item in self.items}
        self.writer = writer
        self.mode = mode
        self.meta = dict(meta or {})
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)

    # ------------------------------------------------------------------ state

    def _done(self) -> set[str]:
        return self.writer.done_ids() & self.by_id.keys()

    def state(self) -> dict[str, Any]:
        with self._lock:
            done = self._done()
            skipped = self.writer.skipped_ids() & done
            current = next((item for item in self.items if item.id not in done), None)
            total = len(self.items)
            return {
                "mode": self.mode,
                "total": total,
                "done": len(done),
                "answered": len(done) - len(skipped),
                "skipped": len(skipped),
                "remaining": total - len(done),
                "finished": current is None,
                "can_undo": bool(done),
                "rating_scale": list(RATING_SCALE),
                "item": None if current is None else current.to_json(),
            }

    @property
    def finished(self) -> bool:
        with self._lock:
            return len(self._done()) == len(self.items)

    # ------------------------------------------------------------------ actions

    def _pending_item(self, payload: Any) -> LabelItem:
        if not isinstance(payload, dict):
            raise RequestError(400, "expected a JSON object")
        item_id = payload.get("id")
        if not isinstance(item_id, str):
            raise RequestError(400, '"id" must be a string')
        item = self.by_id.get(item_id)
        if item is None:
            raise RequestError(404, f"unknown item id {item_id!r}")
        if item_id in self.writer.done_ids():
            raise RequestError(409, f"item {item_id!r} is already answered or skipped (undo it first)")
        return item

    def _meta(self, **fields: Any) -> dict[str, Any]:
        return {"mode": self.mode, **self.meta, **fields, "time": _now()}

    def answer(self, payload: Any, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate and record one answer; returns the new state.

        ``meta``: extra keys for the line's ``"meta"`` (e.g. the simulated labeller's scores);
        not reachable over HTTP.
        """
        extra = dict(meta or {})
        with self._lock:
            item = self._pending_item(payload)
            allowed = {"id", {"compare": "choice", "rate": "score", "rank": "order"}[self.mode]}
            unknown = set(payload) - allowed
            if unknown:
                raise RequestError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
            if self.mode == "compare":
                choice = payload.get("choice")
                if isinstance(choice, bool) or choice not in (0, 1):
                    raise RequestError(400, f'"choice" must be 0 or 1 (index of the better completion), got {choice!r}')
                record = {
                    "id": item.id,
                    "prompt": item.prompt,
                    "chosen": item.completions[choice],
                    "rejected": item.completions[1 - choice],
                    "meta": self._meta(choice=choice, **extra),
                }
            elif self.mode == "rate":
                score = payload.get("score")
                low, high = RATING_SCALE
                if isinstance(score, bool) or not isinstance(score, int) or not low <= score <= high:
                    raise RequestError(400, f'"score" must be an integer from {low} to {high}, got {score!r}')
                record = {
                    "id": item.id,
                    "prompt": item.prompt,
                    "completion": item.completions[0],
                    "score": score,
                    "meta": self._meta(**extra),
                }
            else:
                order = payload.get("order")
                k = len(item.completions)
                if (
                    not isinstance(order, list)
                    or any(isinstance(i, bool) or not isinstance(i, int) for i in order)
                    or sorted(order) != list(range(k))
                ):
                    raise RequestError(400, f'"order" must be a permutation of 0..{k - 1} (best first), got {order!r}')
                record = {
                    "id": item.id,
                    "prompt": item.prompt,
                    "completions": [item.completions[i] for i in order],
                    "meta": self._meta(order=order, **extra),
                }
            self.writer.append(record)
            self.changed.notify_all()
            return self.state()

    def skip(self, payload: Any, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record that an item was skipped (``meta`` as in :meth:`answer`); returns the new state."""
        with self._lock:
            item = self._pending_item(payload)
            if set(payload) - {"id"}:
                raise RequestError(400, f"unknown field(s): {', '.join(sorted(set(payload) - {'id'}))}")
            self.writer.skip(item.id, meta=self._meta(**(meta or {})))
            self.changed.notify_all()
            return self.state()

    def undo(self, payload: Any = None) -> dict[str, Any]:
        with self._lock:
            if payload not in (None, {}):
                raise RequestError(400, "undo takes an empty JSON object")
            undone = self.writer.undo(among=self.by_id.keys())
            if undone is None:
                raise RequestError(409, "nothing to undo")
            self.changed.notify_all()
            return {**self.state(), "undone": undone}

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until every item is done (or ``timeout``); returns whether it is finished."""
        with self.changed:
            return self.changed.wait_for(lambda: self.finished, timeout=timeout)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "textgen-rl-label/1"
    sys_version = ""
    timeout = 30  # seconds per request socket: a stalled client cannot hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ helpers

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name not in LOOPBACK_HOSTS:
            raise RequestError(403, f"Host {host!r} refused: open the page at http://127.0.0.1:<port>/")

    def _read_json(self) -> Any:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise RequestError(411, "chunked bodies are not accepted; send Content-Length")
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise RequestError(411, "Content-Length required")
        try:
            length = int(length_header)
        except ValueError:
            raise RequestError(400, "bad Content-Length") from None
        if length < 0:
            raise RequestError(400, "bad Content-Length")
        if length > MAX_BODY_BYTES:
            self._drain(length)
            raise RequestError(413, f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body = self.rfile.read(length)
        if content_type != "application/json":
            raise RequestError(415, "Content-Type must be application/json")
        if not body.strip():
            return {}
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(400, f"malformed JSON body: {error}") from None

    def _drain(self, length: int) -> None:
        """Read (and drop) a rejected body of modest size so the client can read our reply."""
        remaining = min(length, 16 * MAX_BODY_BYTES)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass
        self.close_connection = True

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        try:
            self._check_host()
            path = self.path.split("?", 1)[0]
            if path == "/api/state":
                self._json(200, self.server.session.state())
                return
            static = STATIC_FILES.get(path)
            if static is None:
                raise RequestError(404, f"no such page: {path}")
            name, content_type = static
            self._send(200, (STATIC_DIR / name).read_bytes(), content_type)
        except RequestError as error:
            self._json(error.status, {"error": error.message})

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        session = self.server.session
        routes = {"/api/answer": session.answer, "/api/skip": session.skip, "/api/undo": session.undo}
        try:
            self._check_host()
            path = self.path.split("?", 1)[0]
            action = routes.get(path)
            if action is None:
                length = self.headers.get("Content-Length") or "0"
                self._drain(int(length) if length.isdigit() else 0)
                raise RequestError(404, f"no such endpoint: POST {path}")
            payload = self._read_json()
            self._json(200, action(payload))
        except RequestError as error:
            self._json(error.status, {"error": error.message})
        except OSError as error:  # e.g. disk full while appending: nothing acknowledged
            self._json(500, {"error": f"could not write the feedback file: {error}"})

    def do_PUT(self) -> None:  # noqa: N802
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method not allowed"})

    do_DELETE = do_PATCH = do_PUT


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: int, session: LabelSession, verbose: bool) -> None:
        self.address_family = family
        self.session = session
        self.verbose = verbose
        super().__init__(address, _Handler)


class LabelServer:
    """Serves a :class:`LabelSession` on a loopback address, in a background thread.

    ``LabelServer(session, port=0).start()`` returns the bound port; :meth:`stop` shuts it down.
    """

    def __init__(self, session: LabelSession, *, host: str = "127.0.0.1", port: int = 8765, verbose: bool = False) -> None:
        self.bind_address, self.family = check_loopback_host(host)
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port={port!r}: expected an integer from 0 to 65535 (0 = any free port)")
        self.session = session
        self.host = host
        self.port = port
        self.verbose = verbose
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving in a daemon thread; returns the bound port."""
        if self._httpd is not None:
            return self.port
        try:
            self._httpd = _HTTPServer((self.bind_address, self.port), self.family, self.session, self.verbose)
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {self.bind_address}:{self.port} ({error.strerror or error}); "
                "pass another --port, or --port 0 for any free port"
            ) from None
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="label-server", daemon=True)
        self._thread.start()
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.bind_address}]" if self.family == socket.AF_INET6 else self.bind_address
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> LabelServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
