"""The labelling server under load and with slow or broken clients: 20 concurrent clients (no
reset, no lost or duplicated answer), the listen backlog, stalled and truncated bodies (408 / 400,
never a 500 or a traceback), a client that resets the connection, write failures."""

from __future__ import annotations

import http.client
import json
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.rlhf.data import FeedbackWriter, read_feedback
from agents.rlhf.generate import Generation, build_items
from agents.rlhf.label_server import LISTEN_BACKLOG, LabelHTTPServer, LabelServer, LabelSession

THREADS = 20
ITEMS_PER_THREAD = 3  # answer, skip, answer
TIMEOUT = 0.4  # the server's request timeout in these tests (seconds)


def generations(n: int) -> list[Generation]:
    return [Generation(i, f"prompt {i}", (f" good {i}.", f" bad {i}.")) for i in range(n)]


class Served:
    """A running server on an ephemeral port, its session and feedback file."""

    def __init__(self, tmp_path: Path, n_items: int, request_timeout: float = TIMEOUT) -> None:
        self.out = tmp_path / "fb.jsonl"
        self.writer = FeedbackWriter(self.out)
        self.session = LabelSession(build_items(generations(n_items), "compare"), self.writer, mode="compare")
        self.server = LabelServer(self.session, port=0, request_timeout=request_timeout)
        self.port = self.server.start()

    def close(self) -> None:
        self.server.stop()
        self.writer.close()

    def request(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        """One request on a fresh connection, no retry: any socket error propagates."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def head(self, path: str = "/api/answer", length: int = 40) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path, THREADS * ITEMS_PER_THREAD)
    try:
        yield served
    finally:
        served.close()


def read_reply(sock: socket.socket) -> tuple[int, dict]:
    """Read a whole reply (the server closes after each one): status and JSON body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def per_id_lines(out: Path) -> Counter:
    """How many lines of the feedback file are about each item id (answers and skips)."""
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return Counter(row.get("id", row.get("skip")) for row in rows)


# --------------------------------------------------------------------------- concurrency


def test_twenty_concurrent_clients_lose_and_duplicate_nothing(served: Served) -> None:
    items = [item.id for item in served.session.items]
    barrier = threading.Barrier(THREADS)
    acked: dict[int, list[tuple[str, str]]] = {t: [] for t in range(THREADS)}
    failures: list[str] = []

    def client(t: int) -> None:
        mine = items[t * ITEMS_PER_THREAD : (t + 1) * ITEMS_PER_THREAD]
        plan = [("/api/answer", {"id": mine[0], "choice": t % 2}), ("/api/skip", {"id": mine[1]}),
                ("/api/answer", {"id": mine[2], "choice": 1 - t % 2})]  # fmt: skip
        try:
            barrier.wait(timeout=30)
            for path, body in plan:
                status, state = served.request("GET", "/api/state")
                assert status == 200 and state["total"] == len(items), (status, state)
                status, state = served.request("POST", path, body)
                if status != 200:
                    failures.append(f"thread {t}: {path} {body} -> {status} {state}")
                    return
                acked[t].append((path, body["id"]))
        except Exception as error:  # noqa: BLE001 - ConnectionResetError etc.: recorded, then asserted
            failures.append(f"thread {t}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    acknowledged = [item_id for t in range(THREADS) for _, item_id in acked[t]]
    assert sorted(acknowledged) == sorted(items)
    counts = per_id_lines(served.out)
    assert counts == Counter({item_id: 1 for item_id in items})  # nothing lost, nothing duplicated
    data = read_feedback(served.out)
    assert len(data.preferences) == 2 * THREADS and sorted(data.skipped) == sorted(items[1::3])
    for pref in data.preferences:  # each answer went to its own item with its own choice
        t = items.index(pref.id) // ITEMS_PER_THREAD
        choice = t % 2 if items.index(pref.id) % 3 == 0 else 1 - t % 2
        assert pref.chosen == (f" good {pref.prompt.split()[1]}.", f" bad {pref.prompt.split()[1]}.")[choice]
    state = served.session.state()
    assert (state["done"], state["answered"], state["skipped"], state["finished"]) == (60, 40, 20, True)


def test_twenty_clients_racing_for_one_item_record_it_once(served: Served) -> None:
    barrier = threading.Barrier(THREADS)
    statuses: list[int] = []
    failures: list[str] = []

    def client(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            statuses.append(served.request("POST", "/api/answer", {"id": "compare-0-0-1", "choice": t % 2})[0])
        except Exception as error:  # noqa: BLE001
            failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert sorted(statuses) == [200] + [409] * (THREADS - 1)
    assert per_id_lines(served.out) == Counter({"compare-0-0-1": 1})


def test_listen_backlog_queues_connections_while_the_accept_loop_is_busy(tmp_path: Path) -> None:
    """The kernel queues ``LISTEN_BACKLOG`` connections before accept(); with the stdlib's 5, the
    7th connect would hang (and clients see timeouts or resets)."""
    assert LISTEN_BACKLOG >= 128
    with FeedbackWriter(tmp_path / "fb.jsonl") as writer:
        session = LabelSession(build_items(generations(2), "compare"), writer)
        httpd = LabelHTTPServer(("127.0.0.1", 0), socket.AF_INET, session, request_timeout=5)
        port = httpd.server_address[1]
        sockets: list[socket.socket] = []
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        try:
            for _ in range(60):  # nobody accepts yet: every one of them waits in the backlog
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            thread.start()
            for sock in sockets:
                sock.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            replies = [read_reply(sock) for sock in sockets]
            assert all(status == 200 and state["total"] == 2 for status, state in replies)
        finally:
            for sock in sockets:
                sock.close()
            if thread.is_alive():
                httpd.shutdown()
            httpd.server_close()


# --------------------------------------------------------------------------- slow and broken clients


def test_stalled_body_is_408_not_a_file_error(served: Served, capfd) -> None:
    state_before = served.session.state()
    with served.connect() as sock:
        sock.sendall(served.head(length=40) + b'{"id": "compare-0-0-1",')  # 23 of 40 bytes, then nothing
        start = time.monotonic()
        status, reply = read_reply(sock)
        elapsed = time.monotonic() - start
    assert status == 408, reply
    assert "not received" in reply["error"] and "feedback file" not in reply["error"]
    assert TIMEOUT * 0.5 <= elapsed < TIMEOUT + 5
    assert served.out.read_bytes() == b"" and served.session.state() == state_before
    assert served.request("POST", "/api/answer", {"id": "compare-0-0-1", "choice": 0})[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_trickling_body_hits_the_whole_body_deadline(served: Served) -> None:
    """A byte every 0.6 timeouts keeps every socket read within the timeout, but the whole body
    must arrive within one timeout: the server answers 408 while the client is still sending."""
    replied_early = False
    with served.connect() as sock:
        sock.sendall(served.head(length=200))
        for _ in range(12):
            readable, _, _ = select.select([sock], [], [], TIMEOUT * 0.6)
            if readable:  # the reply is there: stop sending (more bytes would only reset the connection)
                replied_early = True
                break
            sock.sendall(b" ")
        status, reply = read_reply(sock)
    assert replied_early and status == 408 and "feedback file" not in reply["error"], reply
    assert served.out.read_bytes() == b""


def test_body_shorter_than_content_length(served: Served, capfd) -> None:
    with served.connect() as sock:
        sock.sendall(served.head(length=60) + b'{"id": "compare-0-0-1", "choice": 0}')  # 36 of 60 bytes
        sock.shutdown(socket.SHUT_WR)  # the client is done sending, still reading
        status, reply = read_reply(sock)
    assert status == 400 and "incomplete body" in reply["error"] and "36 of the 60" in reply["error"], reply
    with served.connect() as sock:  # closed outright: nobody to answer, nothing written, no traceback
        sock.sendall(served.head(length=60) + b'{"id": "compare-0-0-1"')
    assert served.request("GET", "/api/state")[0] == 200
    assert served.out.read_bytes() == b"" and served.session.state()["done"] == 0
    assert "Traceback" not in capfd.readouterr().err


def test_stalled_headers_close_the_connection_quietly(served: Served, capfd) -> None:
    with served.connect() as sock:
        sock.sendall(f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n".encode())  # no blank line
        start = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server after its timeout
        assert time.monotonic() - start < TIMEOUT + 5
    assert served.request("GET", "/api/state")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_clients_that_reset_the_connection_leave_no_traceback(served: Served, capfd) -> None:
    for i in range(10):
        sock = served.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
        if i % 2:
            sock.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode())
        else:
            sock.sendall(served.head(length=40) + b'{"id"')
        sock.close()
    time.sleep(TIMEOUT)  # let the handler threads meet the reset
    assert served.request("GET", "/api/state") == (200, served.session.state())
    assert served.out.read_bytes() == b""
    assert "Traceback" not in capfd.readouterr().err


def test_write_failure_is_500_in_one_line(served: Served, capfd, monkeypatch) -> None:
    def disk_full(record: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(served.writer, "append", disk_full)
    status, reply = served.request("POST", "/api/answer", {"id": "compare-0-0-1", "choice": 0})
    assert status == 500 and "could not write the feedback file" in reply["error"] and "No space" in reply["error"]

    def bug(record: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(served.writer, "append", bug)
    status, reply = served.request("POST", "/api/answer", {"id": "compare-0-0-1", "choice": 0})
    assert status == 500 and reply["error"] == "internal error: RuntimeError: boom"
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 2 and err.count("-> 500") == 2, err
    assert served.session.state()["done"] == 0 and served.out.read_bytes() == b""
