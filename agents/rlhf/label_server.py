"""A small local web page for collecting human feedback (``textgen-rl label``).

:class:`LabelSession` holds the items and the :class:`~agents.rlhf.data.FeedbackWriter`; it
validates every answer and appends it to the JSONL file *before* replying, so an acknowledged
answer is on disk. :class:`LabelServer` exposes it over HTTP with :class:`LabelHTTPServer` (the
standard library's ``ThreadingHTTPServer``: one daemon thread per connection, a listen backlog
of 128), bound to a loopback address only.

HTTP API (JSON bodies, ``Content-Type: application/json``, at most 64 KiB)::

    GET  /                 the page (static/index.html, app.js, style.css)
    GET  /api/state        {"mode", "total", "done", "answered", "skipped", "remaining",
                            "finished", "can_undo", "rating_scale",
                            "item": {"id", "prompt", "completions"} | null}
    POST /api/answer       compare: {"id", "choice": 0|1}   (index of the better completion)
                           rate:    {"id", "score": 1..5}
                           rank:    {"id", "order": [best index, ..., worst index]}
    POST /api/skip         {"id"}
    POST /api/undo         {} (or no body)   cancels the latest answer or skip of this session's items

Values are strict: ``"id"`` is a string naming an item of the session, ``"choice"`` and
``"score"`` are JSON integers (not ``true``, not ``1.0``), ``"order"`` is a list of integers that
is a permutation of the completion indices, and no other key is accepted. Integer literals of
more than :data:`MAX_JSON_INT_DIGITS` digits are never converted (they cannot be valid values).

Every successful POST returns the new state. Every error is a JSON object
``{"error": "<message>"}``; a bad value also has ``"field"``, ``"got"`` (the value, shortened)
and ``"expected"``. Status codes:

* 400: malformed JSON (not UTF-8, syntax, ``NaN``, a duplicate key, nested too deeply), a bad
  value, an unknown key, a bad or conflicting ``Content-Length``, a body shorter than its
  ``Content-Length`` (the client closed the connection early);
* 403: a ``Host`` header that is not a loopback name (DNS-rebinding protection, on every page),
  or an ``Origin`` header, on any ``/api/`` route, that is not this server's own loopback origin
  (``http://127.0.0.1:PORT``, ``http://localhost:PORT``, ``http://[::1]:PORT``) or a
  ``Sec-Fetch-Site`` other than ``same-origin``/``none``; no CORS header is ever sent, so other
  origins cannot read the replies either;
* 404: unknown item id, page or endpoint;
* 405: a method other than GET, HEAD or POST;
* 408: the body did not arrive within the request timeout (default
  :data:`DEFAULT_REQUEST_TIMEOUT` seconds); if even that reply cannot be sent the connection is
  simply closed;
* 409: item already answered or skipped / nothing to undo;
* 411: no ``Content-Length`` (chunked or any other ``Transfer-Encoding`` is refused);
* 413: body over 64 KiB;
* 415: ``Content-Type`` is not ``application/json``;
* 500: the feedback file could not be written (the answer is not acknowledged), or a bug.

After any error the session and the feedback file are exactly as before. The server never
prints a traceback: with ``verbose=True`` it logs one line per request or failed connection; a
500 is always logged as one line on stderr.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from text_envs.errors import ConfigError

from .data import FeedbackWriter
from .generate import MODES, LabelItem

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "LISTEN_BACKLOG",
    "MAX_BODY_BYTES",
    "MAX_JSON_INT_DIGITS",
    "LabelHTTPServer",
    "LabelServer",
    "LabelSession",
    "RequestError",
    "check_loopback_host",
    "parse_json_body",
]

MAX_BODY_BYTES = 64 * 1024
#: Integer literals longer than this (sign excluded) are not converted: no valid value is that long.
MAX_JSON_INT_DIGITS = 32
#: Seconds a client has to send its request body (also the socket timeout of each connection).
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Listen backlog: connections the kernel queues while the accept loop is busy.
LISTEN_BACKLOG = 128
#: A rejected body up to this size is read and dropped before the error reply, so that closing
#: the connection with unread data does not reset it before the client has read the reply.
DRAIN_LIMIT = 16 * MAX_BODY_BYTES
MAX_LENGTH_DIGITS = 18
SHUTDOWN_POLL_S = 0.05  # how often the accept loop checks for stop(): stop() returns within this
RATING_SCALE = (1, 5)
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
LOOPBACK_HOSTS = {"127.0.0.1": socket.AF_INET, "localhost": socket.AF_INET, "::1": socket.AF_INET6}
LOOPBACK_ORIGIN_HOSTS = ("127.0.0.1", "localhost", "[::1]")
JSON_TYPE = "application/json; charset=utf-8"
ALLOWED_METHODS = "GET, HEAD, POST"
_SHORT = 80  # characters of a bad value quoted back in an error message


class RequestError(Exception):
    """A rejected request: HTTP status and a message for the JSON error body.

    ``field``/``got``/``expected`` describe a bad value (they are added to the JSON body);
    ``headers`` are extra response headers (e.g. ``Allow`` for a 405).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        got: str | None = None,
        expected: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.got = got
        self.expected = expected
        self.headers = dict(headers or {})

    def to_json(self) -> dict[str, str]:
        """The JSON error body: ``{"error"}`` plus ``field``/``got``/``expected`` when known."""
        body = {"error": self.message}
        for key in ("field", "got", "expected"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


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


# --------------------------------------------------------------------------- strict JSON


@dataclass(frozen=True)
class _OversizedInt:
    """An integer literal too long to be converted (Python refuses over 4300 digits anyway)."""

    literal: str

    def describe(self) -> str:
        digits = self.literal.lstrip("-")
        return f"{self.literal[:12]}... (an integer of {len(digits)} digits)"


class _Missing:
    """Marks a field absent from the payload (distinct from an explicit ``null``)."""


_MISSING = _Missing()


def _bounded_int(literal: str) -> int | _OversizedInt:
    if len(literal.lstrip("-")) > MAX_JSON_INT_DIGITS:
        return _OversizedInt(literal)
    return int(literal)


def _reject_constant(name: str) -> Any:
    raise RequestError(400, f"malformed JSON body: {name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise RequestError(400, f"malformed JSON body: duplicate key {_describe(key)}")
        obj[key] = value
    return obj


def parse_json_body(body: bytes) -> Any:
    """Decode a request body as strict JSON; an empty body is ``{}``.

    Raises :class:`RequestError` (400) for anything that is not UTF-8 JSON, for ``NaN`` /
    ``Infinity``, duplicate keys and excessive nesting. Integer literals of more than
    :data:`MAX_JSON_INT_DIGITS` digits are kept as an opaque marker that no field accepts, so
    the error names the field instead of failing in the int conversion.
    """
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"malformed JSON body: not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"malformed JSON body: {error}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON body: nested too deeply") from None


def _describe_nested(value: Any) -> str:
    return value.describe() if isinstance(value, _OversizedInt) else repr(value)[:_SHORT]


def _describe(value: Any) -> str:
    """A short JSON-like rendering of a client's value for an error message."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    if isinstance(value, _OversizedInt):
        return value.describe()
    try:
        text = json.dumps(value, ensure_ascii=False, default=_describe_nested)
    except (ValueError, RecursionError):  # from Python callers: a huge int, a self-referencing list
        text = f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= _SHORT else f"{text[: _SHORT - 3]}..."


def _is_int(value: Any) -> bool:
    """A real JSON integer: ``int`` but not ``bool`` (floats such as ``1.0`` are not integers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_value(name: str, value: Any, expected: str) -> RequestError:
    got = _describe(value)
    return RequestError(400, f'"{name}" must be {expected}, got {got}', field=name, got=got, expected=expected)


# --------------------------------------------------------------------------- session


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
        """The JSON state of ``GET /api/state`` (counts and the next pending item, or null)."""
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
        """Whether every item is answered or skipped."""
        with self._lock:
            return len(self._done()) == len(self.items)

    # ------------------------------------------------------------------ validation

    def _pending_item(self, payload: Any, allowed: set[str]) -> LabelItem:
        """The item a payload is about: a JSON object with only ``allowed`` keys and a known, pending id."""
        if not isinstance(payload, dict):
            raise RequestError(400, f"expected a JSON object, got {_describe(payload)}")
        unknown = set(payload) - allowed
        if unknown:
            names = ", ".join(_describe(key) for key in sorted(unknown))
            raise RequestError(400, f"unknown field(s): {names[:_SHORT]} (allowed: {', '.join(sorted(allowed))})")
        item_id = payload.get("id", _MISSING)
        if not isinstance(item_id, str):
            raise _bad_value("id", item_id, "a string (the id of an item of this session)")
        item = self.by_id.get(item_id)
        if item is None:
            got = _describe(item_id)
            expected = "the id of an item of this session"
            raise RequestError(404, f"unknown item id {got}", field="id", got=got, expected=expected)
        if item_id in self.writer.done_ids():
            raise RequestError(409, f"item {_describe(item_id)} is already answered or skipped (undo it first)")
        return item

    def _meta(self, **fields: Any) -> dict[str, Any]:
        return {"mode": self.mode, **self.meta, **fields, "time": _now()}

    def _compare_record(self, item: LabelItem, payload: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        choice = payload.get("choice", _MISSING)
        if not _is_int(choice) or choice not in (0, 1):
            raise _bad_value("choice", choice, "0 or 1 (index of the better completion)")
        return {
            "id": item.id,
            "prompt": item.prompt,
            "chosen": item.completions[choice],
            "rejected": item.completions[1 - choice],
            "meta": self._meta(choice=choice, **extra),
        }

    def _rate_record(self, item: LabelItem, payload: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        score = payload.get("score", _MISSING)
        low, high = RATING_SCALE
        if not _is_int(score) or not low <= score <= high:
            raise _bad_value("score", score, f"an integer from {low} to {high}")
        return {
            "id": item.id,
            "prompt": item.prompt,
            "completion": item.completions[0],
            "score": score,
            "meta": self._meta(**extra),
        }

    def _rank_record(self, item: LabelItem, payload: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        order = payload.get("order", _MISSING)
        k = len(item.completions)
        if not isinstance(order, list) or not all(_is_int(i) for i in order) or sorted(order) != list(range(k)):
            raise _bad_value("order", order, f"a list of integers, a permutation of 0..{k - 1} (best first)")
        return {
            "id": item.id,
            "prompt": item.prompt,
            "completions": [item.completions[i] for i in order],
            "meta": self._meta(order=order, **extra),
        }

    # ------------------------------------------------------------------ actions

    def answer(self, payload: Any, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate and record one answer; returns the new state.

        Raises :class:`RequestError` (nothing written) for a payload that is not exactly the
        mode's ``{"id", field}`` with a valid value. ``meta``: extra keys for the line's
        ``"meta"`` (e.g. the simulated labeller's scores); not reachable over HTTP.
        """
        extra = dict(meta or {})
        field, build = {
            "compare": ("choice", self._compare_record),
            "rate": ("score", self._rate_record),
            "rank": ("order", self._rank_record),
        }[self.mode]
        with self._lock:
            item = self._pending_item(payload, {"id", field})
            record = build(item, payload, extra)
            self.writer.append(record)
            self.changed.notify_all()
            return self.state()

    def skip(self, payload: Any, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record that an item was skipped (``meta`` as in :meth:`answer`); returns the new state."""
        with self._lock:
            item = self._pending_item(payload, {"id"})
            self.writer.skip(item.id, meta=self._meta(**(meta or {})))
            self.changed.notify_all()
            return self.state()

    def undo(self, payload: Any = None) -> dict[str, Any]:
        """Cancel the latest answer or skip of this session's items; the state gains ``"undone"``."""
        with self._lock:
            if payload is not None and payload != {}:
                raise RequestError(400, f"undo takes an empty JSON object, got {_describe(payload)}")
            undone = self.writer.undo(among=self.by_id.keys())
            if undone is None:
                raise RequestError(409, "nothing to undo")
            self.changed.notify_all()
            return {**self.state(), "undone": undone}

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until every item is done (or ``timeout``); returns whether it is finished."""
        with self.changed:
            return self.changed.wait_for(lambda: self.finished, timeout=timeout)


# --------------------------------------------------------------------------- HTTP


_Reply = tuple[int, bytes, str]


class _ClientGone(Exception):
    """The connection broke while reading the request: there is nobody left to answer."""


def _json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header value (``[::1]:8765`` -> ``::1``), lower-cased."""
    name = host if host.endswith("]") else host.rsplit(":", 1)[0]
    return name.strip("[]").lower()


class _Handler(BaseHTTPRequestHandler):
    server: LabelHTTPServer
    server_version = "textgen-rl-label/1"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # socket timeout: a stalled client cannot hold a thread
        self._unread = 0  # body bytes announced but not read yet (drained before an error reply)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
        """One line per request (and per failed connection) on stderr, only when verbose."""
        if self.server.verbose:
            super().log_message(format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors of http.server (bad request line, headers too long...) as JSON."""
        self.close_connection = True
        error = RequestError(int(code), message or HTTPStatus(code).phrase)
        self._send_quietly(error.status, _json_bytes(error.to_json()), JSON_TYPE)

    # ------------------------------------------------------------------ sending

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_quietly(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send a reply; a client that is gone (reset, broken pipe, timeout) just closes the connection."""
        try:
            self._send(status, body, content_type, headers)
        except OSError:
            self.close_connection = True

    def _respond(self, route: Callable[[], _Reply]) -> None:
        """Run a route and send its reply, or the JSON error; never lets an exception escape."""
        try:
            status, body, content_type = route()
        except _ClientGone:
            self.close_connection = True
            return
        except RequestError as error:
            self._reply_error(error)
            return
        except Exception as error:  # noqa: BLE001 - a bug: answer 500 and log one line, no traceback
            self._reply_error(RequestError(500, f"internal error: {type(error).__name__}: {error}"))
            return
        self._send_quietly(status, body, content_type)

    def _reply_error(self, error: RequestError) -> None:
        if error.status >= 500:
            sys.stderr.write(f"label server: {self.command} {self.path[:200]} -> {error.status}: {error.message}\n")
        self._discard_unread_body()
        self.close_connection = True
        self._send_quietly(error.status, _json_bytes(error.to_json()), JSON_TYPE, error.headers)

    # ------------------------------------------------------------------ request checks

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _check_host(self) -> None:
        hosts = self.headers.get_all("Host") or []
        host = hosts[0].strip() if len(hosts) == 1 else ""
        if _host_name(host) not in LOOPBACK_HOSTS:
            shown = _describe(hosts[0] if len(hosts) == 1 else hosts)
            raise RequestError(403, f"Host {shown} refused: open the page at http://127.0.0.1:<port>/")

    def _check_origin(self) -> None:
        """An ``Origin`` header, when present, must be this server's own loopback origin.

        ``Sec-Fetch-Site`` (sent by browsers even where they omit ``Origin``, e.g. a cross-site
        ``<script src>``), when present, must say the request comes from the page itself or the user.
        """
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            raise RequestError(
                403, f"Sec-Fetch-Site {_describe(site)} refused: only the labelling page itself may use the API"
            )
        origins = self.headers.get_all("Origin")
        if not origins:
            return
        port = self.server.server_address[1]
        allowed = {f"http://{name}:{port}" for name in LOOPBACK_ORIGIN_HOSTS}
        if len(origins) != 1 or origins[0].strip().lower() not in allowed:
            raise RequestError(
                403,
                f"Origin {_describe(origins[0] if len(origins) == 1 else origins)} refused: "
                f"only the labelling page itself (http://127.0.0.1:{port}) may use the API",
            )

    # ------------------------------------------------------------------ body

    def _content_length(self) -> int:
        """The announced body length: a plain decimal ``Content-Length``, nothing else."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise RequestError(411, "Transfer-Encoding (chunked bodies) is not accepted; send a Content-Length")
        values = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not values:
            raise RequestError(411, "Content-Length required")
        if len(values) > 1:
            raise RequestError(400, "conflicting Content-Length headers")
        text = values.pop()
        if not (text.isascii() and text.isdigit()) or len(text) > MAX_LENGTH_DIGITS:
            raise RequestError(400, f"bad Content-Length {_describe(text)}: expected a decimal number of bytes")
        return int(text)

    def _note_body_length(self) -> None:
        """Remember how much body to drain if the request is refused before its body is read."""
        try:
            self._unread = self._content_length()
        except RequestError:
            self._unread = 0  # unknown framing: the connection is closed without draining

    def _read_body(self, length: int) -> bytes:
        """Read exactly ``length`` body bytes within the request timeout (408 if they do not come)."""
        timeout = self.server.request_timeout
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        received = 0
        try:
            while received < length:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(length - received, 65536))
                if not chunk:
                    raise RequestError(
                        400, f"incomplete body: {received} of the {length} bytes of Content-Length arrived"
                    )
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            raise RequestError(
                408, f"request body not received within {timeout:g} s ({received} of {length} bytes arrived)"
            ) from None
        except OSError:
            raise _ClientGone from None
        finally:
            self._unread = 0 if received == length else -1  # -1: stream position lost, do not drain
            self.connection.settimeout(timeout)
        return b"".join(chunks)

    def _discard_unread_body(self) -> None:
        """Drop a refused body of modest size, so the client reads our reply instead of a reset."""
        if not 0 < self._unread <= DRAIN_LIMIT:
            return
        try:
            self._read_body(self._unread)
        except (RequestError, _ClientGone):
            pass

    def _read_json(self) -> Any:
        length = self._content_length()
        if length > MAX_BODY_BYTES:
            raise RequestError(413, f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise RequestError(415, "Content-Type must be application/json")
        return parse_json_body(self._read_body(length))

    # ------------------------------------------------------------------ routes

    def _get(self) -> _Reply:
        self._check_host()
        path = self._path()
        if path.startswith("/api/"):
            self._check_origin()
            if path != "/api/state":
                raise RequestError(404, f"no such endpoint: {self.command} {path[:200]}")
            return 200, _json_bytes(self.server.session.state()), JSON_TYPE
        static = STATIC_FILES.get(path)
        if static is None:
            raise RequestError(404, f"no such page: {path[:200]}")
        name, content_type = static
        return 200, (STATIC_DIR / name).read_bytes(), content_type

    def _post(self) -> _Reply:
        self._note_body_length()
        self._check_host()
        self._check_origin()
        session = self.server.session
        routes = {"/api/answer": session.answer, "/api/skip": session.skip, "/api/undo": session.undo}
        path = self._path()
        action = routes.get(path)
        if action is None:
            raise RequestError(404, f"no such endpoint: POST {path[:200]}")
        payload = self._read_json()
        try:
            state = action(payload)
        except OSError as error:  # e.g. disk full while appending: nothing acknowledged
            raise RequestError(500, f"could not write the feedback file: {error}") from None
        return 200, _json_bytes(state), JSON_TYPE

    def _not_allowed(self) -> _Reply:
        self._note_body_length()
        self._check_host()
        if self._path().startswith("/api/"):
            self._check_origin()
        raise RequestError(405, f"method {self.command} not allowed", headers={"Allow": ALLOWED_METHODS})

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._respond(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self._respond(self._post)

    def do_PUT(self) -> None:  # noqa: N802 - http.server API
        self._respond(self._not_allowed)

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT


class LabelHTTPServer(ThreadingHTTPServer):
    """The HTTP server of a :class:`LabelSession`: a thread per connection, a 128-deep backlog.

    Handler threads are daemons (a stalled client never blocks shutdown), each connection has
    ``request_timeout`` seconds per socket operation and for its whole body, and errors in a
    connection are logged as one line (``verbose`` only) instead of a traceback.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        family: int,
        session: LabelSession,
        *,
        verbose: bool = False,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.address_family = family
        self.session = session
        self.verbose = verbose
        self.request_timeout = request_timeout
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection failed outside the routes (e.g. reset mid-request): one line, verbose only."""
        if self.verbose:
            error = sys.exc_info()[1]
            name = type(error).__name__
            sys.stderr.write(f"label server: connection from {client_address!r} failed: {name}: {error}\n")


class LabelServer:
    """Serves a :class:`LabelSession` on a loopback address, in a background thread.

    ``LabelServer(session, port=0).start()`` returns the bound port; :meth:`stop` shuts it down.
    ``request_timeout``: seconds a client has to send a request body (and per socket operation).
    """

    def __init__(
        self,
        session: LabelSession,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        verbose: bool = False,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.bind_address, self.family = check_loopback_host(host)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"port={port!r}: expected an integer from 0 to 65535 (0 = any free port)")
        if (
            not isinstance(request_timeout, (int, float))
            or isinstance(request_timeout, bool)
            or not math.isfinite(request_timeout)
            or request_timeout <= 0
        ):
            raise ConfigError(f"request_timeout={request_timeout!r}: expected a positive number of seconds")
        self.session = session
        self.host = host
        self.port = port
        self.verbose = verbose
        self.request_timeout = float(request_timeout)
        self._httpd: LabelHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving in a daemon thread; returns the bound port."""
        if self._httpd is not None:
            return self.port
        try:
            self._httpd = LabelHTTPServer(
                (self.bind_address, self.port),
                self.family,
                self.session,
                verbose=self.verbose,
                request_timeout=self.request_timeout,
            )
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {self.bind_address}:{self.port} ({error.strerror or error}); "
                "pass another --port, or --port 0 for any free port"
            ) from None
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="label-server",
            daemon=True,
        )
        self._thread.start()
        return self.port

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8765/``."""
        host = f"[{self.bind_address}]" if self.family == socket.AF_INET6 else self.bind_address
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
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
