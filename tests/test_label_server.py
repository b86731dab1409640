"""The labelling server: JSON API, strict validation (4xx, file untouched), Host/Origin checks, undo/skip,
resume, loopback only; item generation (seeded, cached); the ``textgen-rl label`` command end to end."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.rlhf.data import FeedbackWriter, read_feedback
from agents.rlhf.generate import (
    Generation,
    GenerationSettings,
    LabelItem,
    build_items,
    generate_completions,
    items_path_for,
    load_or_generate,
)
from agents.rlhf.label_server import MAX_BODY_BYTES, LabelServer, LabelSession
from text_envs.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

GENERATIONS = [
    Generation(0, "The food was", (" delicious and warm.", " cold and bland.")),
    Generation(1, "My neighbour", (" waved hello.", " shouted at me.")),
    Generation(2, "Today", (" the sun came out.", " it rained all day.")),
    Generation(3, "The <b>test</b> & co", (' "quoted" <script>alert(1)</script>', " plain\nnew line")),
]


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: object = None, *, raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def state(self) -> dict:
        status, body = self.request("GET", "/api/state")
        assert status == 200
        return body

    def post(self, path: str, body: object) -> tuple[int, dict]:
        return self.request("POST", path, body)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Client, LabelSession, Path]]:
    out = tmp_path / "fb.jsonl"
    writer = FeedbackWriter(out)
    session = LabelSession(build_items(GENERATIONS, "compare"), writer, mode="compare", meta={"model": "test"})
    server = LabelServer(session, port=0)
    port = server.start()
    assert port > 0 and server.url == f"http://127.0.0.1:{port}/"
    try:
        yield Client(port), session, out
    finally:
        server.stop()
        writer.close()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_page_and_static_files_are_served(served) -> None:
    client, _, _ = served
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        with urllib.request.urlopen(client.base + path, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith(kind)
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.read()
    status, body = client.request("GET", "/../pyproject.toml")
    assert status == 404 and "error" in body


def test_answer_flow_writes_each_answer_immediately(served) -> None:
    client, _, out = served
    state = client.state()
    assert state["mode"] == "compare" and state["total"] == 4 and state["done"] == 0 and not state["finished"]
    assert state["item"] == {"id": "compare-0-0-1", "prompt": "The food was", "completions": [" delicious and warm.", " cold and bland."]}

    status, state = client.post("/api/answer", {"id": "compare-0-0-1", "choice": 0})
    assert status == 200 and state["done"] == 1 and state["item"]["id"] == "compare-1-0-1"
    assert len(lines(out)) == 1  # on disk before the reply
    status, state = client.post("/api/answer", {"id": "compare-1-0-1", "choice": 1})
    assert status == 200
    recorded = lines(out)
    assert recorded[0]["chosen"] == " delicious and warm." and recorded[0]["rejected"] == " cold and bland."
    assert recorded[1]["chosen"] == " shouted at me." and recorded[1]["rejected"] == " waved hello."
    assert recorded[1]["id"] == "compare-1-0-1" and recorded[1]["meta"]["choice"] == 1
    assert recorded[1]["meta"]["mode"] == "compare" and recorded[1]["meta"]["model"] == "test"
    pairs = read_feedback(out).preferences
    assert [p.prompt for p in pairs] == ["The food was", "My neighbour"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/answer", {"id": "nope", "choice": 0}, 404, "unknown item id"),
        ("/api/answer", {"id": "compare-0-0-1", "choice": 2}, 400, '"choice" must be 0 or 1'),
        ("/api/answer", {"id": "compare-0-0-1", "choice": "0"}, 400, '"choice" must be 0 or 1'),
        ("/api/answer", {"id": "compare-0-0-1", "choice": True}, 400, '"choice" must be 0 or 1'),
        ("/api/answer", {"id": "compare-0-0-1"}, 400, '"choice" must be 0 or 1'),
        ("/api/answer", {"id": "compare-0-0-1", "choice": 0, "evil": 1}, 400, "unknown field"),
        ("/api/answer", {"id": "compare-0-0-1", "choice": 0, "score": 5}, 400, "unknown field"),
        ("/api/answer", {"choice": 0}, 400, '"id" must be a string'),
        ("/api/answer", [1, 2], 400, "expected a JSON object"),
        ("/api/answer", {"id": "compare-2-0-1", "choice": 0}, 409, "already answered"),
        ("/api/skip", {"id": "nope"}, 404, "unknown item id"),
        ("/api/skip", {"id": "compare-2-0-1"}, 409, "already answered"),
        ("/api/undo", {"x": 1}, 400, "empty JSON object"),
        ("/api/nothing", {}, 404, "no such endpoint"),
    ],
)
def test_bad_requests_leave_file_untouched(served, path: str, body: object, status: int, message: str) -> None:
    client, _, out = served
    assert client.post("/api/answer", {"id": "compare-2-0-1", "choice": 0})[0] == 200
    before = out.read_bytes()
    got_status, got = client.post(path, body)
    assert got_status == status, got
    assert message in got["error"]
    assert out.read_bytes() == before
    assert client.state()["done"] == 1


def test_malformed_oversized_and_wrong_type_bodies(served) -> None:
    client, _, out = served
    client.post("/api/answer", {"id": "compare-0-0-1", "choice": 1})
    before = out.read_bytes()
    cases = [
        (b"{not json", {}, 400, "malformed JSON"),
        (b"\xff\xfe", {}, 400, "malformed JSON"),
        (b'{"id": "compare-1-0-1", "choice": 0, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}', {}, 413, "limit"),
        (b'{"id": "compare-1-0-1", "choice": 0}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b'{"id": "compare-1-0-1", "choice": 0}', {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ]
    for raw, headers, status, message in cases:
        got_status, got = client.request("POST", "/api/answer", raw=raw, headers=headers)
        assert (got_status, message in got["error"]) == (status, True), (raw[:40], got)
        assert out.read_bytes() == before
    # a foreign Host header (DNS rebinding) is refused
    port = int(client.base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"id": "compare-1-0-1", "choice": 0})
    conn.request("POST", "/api/answer", body=body, headers={"Host": f"evil.example:{port}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 403 and "Host" in json.loads(response.read())["error"]
    conn.close()
    # no Content-Length
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/api/answer")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411
    conn.close()
    assert out.read_bytes() == before
    assert client.state()["done"] == 1


def test_skip_and_undo(served) -> None:
    client, _, out = served
    status, _ = client.post("/api/undo", {})
    assert status == 409  # nothing to undo yet
    client.post("/api/answer", {"id": "compare-0-0-1", "choice": 0})
    status, state = client.post("/api/skip", {"id": "compare-1-0-1"})
    assert status == 200 and state["skipped"] == 1 and state["answered"] == 1 and state["item"]["id"] == "compare-2-0-1"
    status, state = client.post("/api/undo", {})
    assert status == 200 and state["undone"] == "compare-1-0-1" and state["item"]["id"] == "compare-1-0-1"
    status, state = client.request("POST", "/api/undo", raw=b"")  # empty body is fine too
    assert status == 200 and state["undone"] == "compare-0-0-1" and state["done"] == 0
    assert state["item"]["id"] == "compare-0-0-1" and not state["can_undo"]
    client.post("/api/answer", {"id": "compare-0-0-1", "choice": 1})
    data = read_feedback(out)
    assert [(p.id, p.chosen) for p in data.preferences] == [("compare-0-0-1", " cold and bland.")]
    assert data.skipped == []
    assert [list(line)[0] if "undo" in line or "skip" in line else "answer" for line in lines(out)] == [
        "answer",
        "skip",
        "undo",
        "undo",
        "answer",
    ]


def test_finishing_and_restart_resume_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "fb.jsonl"
    items = build_items(GENERATIONS, "compare")

    def serve() -> tuple[LabelServer, FeedbackWriter, LabelSession, Client]:
        writer = FeedbackWriter(out)
        session = LabelSession(items, writer, mode="compare")
        server = LabelServer(session, port=0)
        return server, writer, session, Client(server.start())

    server, writer, session, client = serve()
    client.post("/api/answer", {"id": "compare-0-0-1", "choice": 0})
    client.post("/api/skip", {"id": "compare-1-0-1"})
    server.stop()
    writer.close()

    server, writer, session, client = serve()
    try:
        state = client.state()
        assert (state["done"], state["answered"], state["skipped"]) == (2, 1, 1)
        assert state["item"]["id"] == "compare-2-0-1"
        assert client.post("/api/answer", {"id": "compare-0-0-1", "choice": 1})[0] == 409  # no duplicate
        assert not session.wait_finished(timeout=0.05)
        client.post("/api/answer", {"id": "compare-2-0-1", "choice": 1})
        status, state = client.post("/api/answer", {"id": "compare-3-0-1", "choice": 0})
        assert status == 200 and state["finished"] and state["item"] is None and state["remaining"] == 0
        assert session.wait_finished(timeout=1)
        status, state = client.post("/api/undo", {})  # undo still works when finished
        assert not state["finished"] and state["item"]["id"] == "compare-3-0-1"
        client.post("/api/answer", {"id": "compare-3-0-1", "choice": 1})
    finally:
        server.stop()
        writer.close()
    data = read_feedback(out)
    ids = [p.id for p in data.preferences]
    assert ids == ["compare-0-0-1", "compare-2-0-1", "compare-3-0-1"] and len(set(ids)) == len(ids)
    assert data.skipped == ["compare-1-0-1"]
    assert data.preferences[-1].chosen == ' plain\nnew line'


def test_rate_mode(tmp_path: Path) -> None:
    items = build_items(GENERATIONS[:2], "rate")
    assert [i.id for i in items] == ["rate-0-0", "rate-0-1", "rate-1-0", "rate-1-1"]
    with FeedbackWriter(tmp_path / "r.jsonl") as writer:
        server = LabelServer(LabelSession(items, writer, mode="rate"), port=0)
        client = Client(server.start())
        try:
            for bad in (0, 6, 2.5, "3", None, True):
                assert client.post("/api/answer", {"id": "rate-0-0", "score": bad})[0] == 400
            assert client.post("/api/answer", {"id": "rate-0-0", "score": 5})[0] == 200
            assert client.post("/api/answer", {"id": "rate-0-1", "score": 1})[0] == 200
        finally:
            server.stop()
    ratings = read_feedback(tmp_path / "r.jsonl").ratings
    assert [(r.completion, r.score) for r in ratings] == [(" delicious and warm.", 5), (" cold and bland.", 1)]


def test_rank_mode(tmp_path: Path) -> None:
    gens = [Generation(0, "p", ("a", "b", "c"))]
    items = build_items(gens, "rank")
    assert items == [LabelItem("rank-0", "p", ("a", "b", "c"))]
    assert [i.id for i in build_items(gens, "compare")] == ["compare-0-0-1", "compare-0-0-2", "compare-0-1-2"]
    with FeedbackWriter(tmp_path / "k.jsonl") as writer:
        server = LabelServer(LabelSession(items, writer, mode="rank"), port=0)
        client = Client(server.start())
        try:
            for bad in ([0, 1], [0, 1, 1], [0, 1, 3], "012", [0, 1, True]):
                assert client.post("/api/answer", {"id": "rank-0", "order": bad})[0] == 400
            status, state = client.post("/api/answer", {"id": "rank-0", "order": [2, 0, 1]})
            assert status == 200 and state["finished"]
        finally:
            server.stop()
    (ranking,) = read_feedback(tmp_path / "k.jsonl").rankings
    assert ranking.completions == ("c", "a", "b")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "", "::"])
def test_non_loopback_host_is_refused(tmp_path: Path, host: str) -> None:
    with FeedbackWriter(tmp_path / "fb.jsonl") as writer:
        session = LabelSession(build_items(GENERATIONS, "compare"), writer)
        with pytest.raises(ConfigError, match="loopback"):
            LabelServer(session, host=host, port=0)


def test_localhost_alias_and_busy_port(tmp_path: Path) -> None:
    with FeedbackWriter(tmp_path / "fb.jsonl") as writer:
        session = LabelSession(build_items(GENERATIONS, "compare"), writer)
        with LabelServer(session, host="localhost", port=0) as first:
            assert first.url.startswith("http://127.0.0.1:")
            with pytest.raises(ConfigError, match="--port 0"):
                LabelServer(session, port=first.port).start()


def test_session_rejects_inconsistent_items(tmp_path: Path) -> None:
    with FeedbackWriter(tmp_path / "fb.jsonl") as writer:
        with pytest.raises(ConfigError, match="unique"):
            LabelSession([LabelItem("a", "p", ("x", "y")), LabelItem("a", "p", ("x", "y"))], writer)
        with pytest.raises(ConfigError, match="needs 2"):
            LabelSession([LabelItem("a", "p", ("x", "y", "z"))], writer, mode="compare")
        with pytest.raises(ConfigError, match="mode"):
            LabelSession([], writer, mode="vote")


# --------------------------------------------------------------------------- generation


def test_generation_is_seeded_and_cached(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    prompts = ["The weather is", "I think", ""]
    first = generate_completions(model, tokenizer, prompts, 2, max_new_tokens=6, seed=3)
    again = generate_completions(model, tokenizer, prompts, 2, max_new_tokens=6, seed=3)
    assert first == again
    assert [g.prompt for g in first] == prompts and all(len(g.completions) == 2 for g in first)
    assert all(isinstance(c, str) for g in first for c in g.completions)
    # prompt i does not depend on how many prompts come before or after it
    assert generate_completions(model, tokenizer, prompts[:1], 2, max_new_tokens=6, seed=3)[0] == first[0]
    assert generate_completions(model, tokenizer, prompts, 2, max_new_tokens=6, seed=4) != first

    out = tmp_path / "fb.jsonl"
    settings = GenerationSettings(model="m", task="t", n=3, k=2, seed=3, max_new_tokens=6)
    calls = []

    def generate() -> list[Generation]:
        calls.append(1)
        return first

    assert load_or_generate(out, settings, generate) == first
    assert items_path_for(out).name == "fb.jsonl.items.json"
    assert load_or_generate(out, settings, generate) == first  # reused, not regenerated
    assert len(calls) == 1
    other = GenerationSettings(model="m", task="t", n=3, k=2, seed=4, max_new_tokens=6)
    with pytest.raises(ConfigError, match=r"seed=3 \(now 4\)"):
        load_or_generate(out, other, generate)
    items_path_for(out).write_text("{broken", encoding="utf-8")
    with pytest.raises(ConfigError, match="delete it"):
        load_or_generate(out, settings, generate)


# --------------------------------------------------------------------------- command line


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    return env


def test_label_command_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "fb.jsonl"
    cmd = [
        sys.executable, "-m", "agents.cli", "label", "--model", "tiny", "--task", "sentiment", "--n", "2", "--k", "2",
        "--out", str(out), "--port", "0", "--no-browser", "--linger", "0", "--max-new-tokens", "4", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if " at http://" in line:
                url = line.split(" at ", 1)[1].strip()
        assert url, proc.stderr.read() if proc.poll() is not None else "no URL printed"
        client = Client(int(url.rstrip("/").rsplit(":", 1)[1]))
        state = client.state()
        assert state["total"] == 2
        for choice in (0, 1):
            status, state = client.post("/api/answer", {"id": state["item"]["id"], "choice": choice})
            assert status == 200
        assert proc.wait(timeout=30) == 0  # exits by itself when every item is done
        tail = proc.stdout.read()
        assert "done: 2 answered, 0 skipped" in tail
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert len(read_feedback(out).preferences) == 2
    assert items_path_for(out).is_file()
    # rerun with the same arguments: resumes, finds nothing left, exits at once
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "already answered" in rerun.stdout
    assert len(read_feedback(out).preferences) == 2


def test_label_command_refuses_public_host(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "agents.cli", "label", "--out", str(tmp_path / "f.jsonl"), "--host", "0.0.0.0", "--no-browser"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines_ = result.stderr.strip().splitlines()
    assert len(lines_) == 1 and lines_[0].startswith("textgen-rl label: error: host='0.0.0.0'"), result.stderr
    assert not (tmp_path / "f.jsonl").exists()


# --------------------------------------------------------------------------- simulated labeller (--oracle)


def word_count(prompts: list[str], completions: list[str]) -> list[float]:
    """A hidden rule for the oracle tests: more words is better."""
    return [float(len(c.split())) for c in completions]


ORACLE_GENERATIONS = [
    Generation(0, "The food was", (" very good indeed.", " good.", " fine, I guess so.")),
    Generation(1, "My neighbour", (" waved.", " smiled.", " shouted.")),  # all tie
    Generation(2, "Today", (" it rained.", " the sun came out.", " it rained.")),
]


def test_oracle_pure_decisions() -> None:
    from agents.rlhf.oracle import compare_choice, rank_order, ratings_for

    assert compare_choice([0.2, 0.7]) == 1 and compare_choice([0.7, 0.2]) == 0
    assert compare_choice([0.5, 0.5]) is None and compare_choice([0.5, 0.55], margin=0.1) is None
    assert rank_order([1.0, 3.0, 3.0, 0.0]) == [1, 2, 0, 3]  # ties keep their order
    assert rank_order([2.0, 2.0, 2.0]) is None and rank_order([1.0, 1.05], margin=0.1) is None
    # quantile: mid-rank quantile, a fifth of the items per rating, equal scores equal ratings
    assert ratings_for(list(range(10))) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert ratings_for([7.0, 7.0, 7.0]) == [3, 3, 3] and ratings_for([0.5]) == [3] and ratings_for([]) == []
    assert ratings_for([3.0, 1.0, 2.0, 2.0], "quantile") == [5, 1, 3, 3]
    # minmax: linear between the session's extremes (round half up)
    assert ratings_for([-1.0, 0.0, 1.0, 0.3], "minmax") == [1, 3, 5, 4]
    assert ratings_for([2.0, 2.0], "minmax") == [3, 3]
    # fixed range: independent of the other items, clipped
    assert ratings_for([-3.0, -1.0, 0.0, 0.5, 3.0], (-1, 1)) == [1, 1, 3, 4, 5]
    assert ratings_for([0.0], "-1,1") == [3]


def test_oracle_specs_and_errors() -> None:
    from agents.rlhf.oracle import make_oracle, oracle_answers, parse_oracle_spec, parse_rating_scale
    from text_envs.errors import TextEnvsError

    assert parse_oracle_spec("sentiment") == ("sentiment", {})
    assert parse_oracle_spec('length:{"target_words": 30}') == ("length", {"target_words": 30})
    assert parse_oracle_spec("length:target_words=30") == ("length", {"target_words": 30})
    assert parse_oracle_spec("learned:rm/v1") == ("learned", {"path": "rm/v1"})
    for bad, message in (("", "non-empty|reward name"), ("length:{oops", "not valid JSON"), ("length:[1]", "JSON object|not valid"),
                         (":x=1", "no reward name")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_oracle_spec(bad)
    assert parse_rating_scale("quantile") == "quantile" and parse_rating_scale("-1,1") == (-1.0, 1.0)
    for bad in ("median", "1,1", "2,1", "a,b", "1,2,3", "nan,1"):
        with pytest.raises(ConfigError, match="rating scale"):
            parse_rating_scale(bad)
    assert make_oracle("length:target_words=5")(["p"], [" one two three four five"])[0] == 0.0
    with pytest.raises(TextEnvsError, match="no-such-reward"):
        make_oracle("no-such-reward")
    with pytest.raises(ConfigError, match="margin"):
        oracle_answers([], [], "compare", margin=-1)


def test_oracle_compare_writes_the_same_lines_and_resumes(tmp_path: Path) -> None:
    from agents.rlhf.oracle import run_oracle

    out = tmp_path / "fb.jsonl"
    items = build_items(ORACLE_GENERATIONS, "compare")  # 3 pairs per prompt
    with FeedbackWriter(out) as writer:
        session = LabelSession(items, writer, mode="compare", meta={"model": "m", "task": "t"})
        session.answer({"id": "compare-0-0-1", "choice": 1})  # a human answers one item first
        summary = run_oracle(session, word_count, spec="words")
        assert session.finished
    assert (summary.answered, summary.skipped, summary.already_done, summary.total) == (4, 4, 1, 9)
    rows = lines(out)
    assert len(rows) == 9 and len({row.get("id", row.get("skip")) for row in rows}) == 9
    human, oracle_rows = rows[0], rows[1:]
    for row in oracle_rows:
        if "skip" in row:  # ties (prompt 1 entirely, and the two identical completions of prompt 2)
            assert set(row) == {"skip", "meta"} and row["meta"]["reason"] == "tie"
            assert row["meta"]["oracle_scores"][0] == row["meta"]["oracle_scores"][1]
            continue
        assert set(row) == set(human) == {"id", "prompt", "chosen", "rejected", "meta"}
        assert len(row["chosen"].split()) > len(row["rejected"].split())
        assert row["meta"]["labeller"] == "oracle:words" and row["meta"]["model"] == "m"
        assert set(human["meta"]) <= set(row["meta"])
    assert sorted(row["skip"] for row in oracle_rows if "skip" in row) == [
        "compare-1-0-1", "compare-1-0-2", "compare-1-1-2", "compare-2-0-2"]  # fmt: skip
    assert len(read_feedback(out).preferences) == 5
    # resuming answers nothing new and writes nothing
    before = out.read_bytes()
    with FeedbackWriter(out) as writer:
        again = run_oracle(LabelSession(items, writer, mode="compare"), word_count, spec="words")
    assert (again.answered, again.skipped, again.already_done) == (0, 0, 9) and out.read_bytes() == before


def test_oracle_rate_and_rank(tmp_path: Path) -> None:
    from agents.rlhf.oracle import run_oracle

    out = tmp_path / "fb.jsonl"
    with FeedbackWriter(out) as writer:
        summary = run_oracle(LabelSession(build_items(ORACLE_GENERATIONS, "rate"), writer, mode="rate"), word_count,
                             spec="words", rating_scale="minmax")  # fmt: skip
        assert (summary.answered, summary.skipped) == (9, 0)
        summary = run_oracle(LabelSession(build_items(ORACLE_GENERATIONS, "rank"), writer, mode="rank"), word_count,
                             spec="words")  # fmt: skip
        assert (summary.answered, summary.skipped) == (2, 1)  # prompt 1: all completions tie
    data = read_feedback(out)
    by_completion = {(r.prompt, r.completion): r.score for r in data.ratings}
    assert by_completion[("The food was", " fine, I guess so.")] == 5  # 4 words: the maximum
    assert by_completion[("The food was", " very good indeed.")] == 4  # 1 + 4 * (3 - 1) / (4 - 1) = 3.67
    assert by_completion[("My neighbour", " waved.")] == 1  # 1 word: the minimum
    assert by_completion[("Today", " the sun came out.")] == 5
    assert all(isinstance(score, int) and 1 <= score <= 5 for score in by_completion.values())
    rankings = {r.prompt: r.completions for r in data.rankings}
    assert rankings["The food was"] == (" fine, I guess so.", " very good indeed.", " good.")
    assert rankings["Today"] == (" the sun came out.", " it rained.", " it rained.")
    assert data.skipped == ["rank-1"]


@pytest.mark.slow
def test_label_command_with_oracle(tmp_path: Path) -> None:
    out = tmp_path / "fb.jsonl"
    cmd = [
        sys.executable, "-m", "agents.cli", "label", "--model", "tiny", "--task", "sentiment", "--n", "4", "--k", "3",
        "--out", str(out), "--max-new-tokens", "6", "--device", "cpu", "--oracle", 'length:{"target_words": 10}',
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=_cli_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert 'oracle length:{"target_words": 10}: ' in result.stdout and "12/12 items done" in result.stdout
    data = read_feedback(out)
    assert len(data.preferences) + len(data.skipped) == 12 and data.preferences
    assert all(p.extra["meta"]["labeller"].startswith("oracle:length") for p in data.preferences)
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=_cli_env(), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0 and "already answered" in rerun.stdout, rerun.stderr
    assert len(read_feedback(out).preferences) == len(data.preferences)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--oracle", "no-such-reward"], "no-such-reward"),
        (["--oracle", "length:{bad"], "not valid JSON"),
        (["--oracle", "length", "--oracle-margin", "-1"], "--oracle-margin -1"),
        (["--oracle", "length", "--mode", "rate", "--oracle-rating", "median"], "rating scale 'median'"),
    ],
)
def test_label_command_oracle_bad_input(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    from agents.cli import main

    out = tmp_path / "fb.jsonl"
    assert main(["label", "--out", str(out), "--device", "cpu", *extra]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("textgen-rl label: error: "), err_lines
    assert message in err_lines[0]
    assert not out.exists()


# --------------------------------------------------------------------------- strict values and origins

HUGE = "9" * 5000  # over Python's int-string conversion limit (4300 digits)


def _error_is_about(got: dict, field: str) -> None:
    assert f'"{field}"' in got["error"] and got["field"] == field, got
    assert got["expected"] and got["got"] and len(got["got"]) <= 80, got


def _post_raw(client: Client, path: str, text: str) -> tuple[int, dict]:
    return client.request("POST", path, raw=text.encode("utf-8"))


@pytest.mark.parametrize(
    "choice", ["1.0", "0.0", "1e0", "true", "false", "null", '"1"', "[1]", '{"v": 1}', "-1", "2", HUGE, "-" + HUGE]
)
def test_choice_must_be_a_real_int(served, capfd, choice: str) -> None:
    client, session, out = served
    assert client.post("/api/answer", {"id": "compare-0-0-1", "choice": 0})[0] == 200
    before, state_before = out.read_bytes(), session.state()
    status, got = _post_raw(client, "/api/answer", f'{{"id": "compare-1-0-1", "choice": {choice}}}')
    assert status == 400, got
    _error_is_about(got, "choice")
    assert "0 or 1" in got["expected"]
    assert out.read_bytes() == before and session.state() == state_before
    assert client.post("/api/answer", {"id": "compare-1-0-1", "choice": 1})[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("item_id", ["5", "1.0", "true", "null", '["compare-0-0-1"]', '{"id": "compare-0-0-1"}', HUGE])
@pytest.mark.parametrize("path", ["/api/answer", "/api/skip"])
def test_id_must_be_a_string(served, capfd, path: str, item_id: str) -> None:
    client, session, out = served
    before, state_before = out.read_bytes(), session.state()
    choice = ', "choice": 0' if path == "/api/answer" else ""
    status, got = _post_raw(client, path, f'{{"id": {item_id}{choice}}}')
    assert status == 400, got
    _error_is_about(got, "id")
    assert out.read_bytes() == before and session.state() == state_before
    assert "Traceback" not in capfd.readouterr().err


def test_unknown_id_names_the_value_shortened(served) -> None:
    client, session, out = served
    for item_id in ("", "x" * 10_000, "compare-0-0-1 "):
        status, got = client.post("/api/skip", {"id": item_id})
        assert status == 404 and got["field"] == "id" and "unknown item id" in got["error"], got
        assert len(got["got"]) <= 80
    assert out.read_bytes() == b"" and session.state()["done"] == 0


def test_rate_and_rank_values_are_strict(tmp_path: Path, capfd) -> None:
    gens = [Generation(0, "p", ("a", "b", "c"))]
    for mode, field, good, bads in (
        ("rate", "score", "5", ["5.0", "2.5", "1e0", "true", "0", "6", "-1", HUGE, '"3"', "null", "[3]"]),
        ("rank", "order", "[2, 0, 1]", ["[0, 1.0, 2]", "[0, 1, true]", f"[0, 1, {HUGE}]", "[0, 1]", "[0, 1, 2, 3]",
                                        "[0, 0, 1]", "[0, 1, -1]", "[2.0, 0, 1]", '"012"', "2", "null", "{}"]),
    ):  # fmt: skip
        out = tmp_path / f"{mode}.jsonl"
        with FeedbackWriter(out) as writer:
            session = LabelSession(build_items(gens, mode), writer, mode=mode)
            server = LabelServer(session, port=0)
            client = Client(server.start())
            item_id = session.state()["item"]["id"]
            try:
                for bad in bads:
                    status, got = _post_raw(client, "/api/answer", f'{{"id": "{item_id}", "{field}": {bad}}}')
                    assert status == 400, (mode, bad, got)
                    _error_is_about(got, field)
                    assert out.read_bytes() == b"" and session.state()["done"] == 0
                status, _ = _post_raw(client, "/api/answer", f'{{"id": "{item_id}", "{field}": {good}}}')
                assert status == 200
            finally:
                server.stop()
        assert len(lines(out)) == 1
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "compare-0-0-1", "choice": NaN}', "NaN"),
        ('{"id": "compare-0-0-1", "choice": Infinity}', "Infinity"),
        ('{"id": "compare-0-0-1", "choice": -Infinity}', "Infinity"),
        ('{"id": "compare-0-0-1", "choice": 1, "choice": 0}', "duplicate key"),
        ("[" * 60_000, "nested too deeply"),
        ('{"a":' * 5_000 + "1" + "}" * 5_000, "nested too deeply"),
        ('\ufeff{"id": "compare-0-0-1", "choice": 0}', "malformed JSON"),
    ],
)
def test_malformed_json_variants_are_400(served, capfd, text: str, message: str) -> None:
    client, session, out = served
    status, got = _post_raw(client, "/api/answer", text)
    assert status == 400 and "malformed JSON" in got["error"] and message in got["error"], got
    assert out.read_bytes() == b"" and session.state()["done"] == 0
    assert "Traceback" not in capfd.readouterr().err


def test_parse_json_body_bounds_integer_literals() -> None:
    from agents.rlhf.label_server import MAX_JSON_INT_DIGITS, RequestError, parse_json_body

    assert parse_json_body(b"") == {} and parse_json_body(b" \n") == {}
    limit = "7" * MAX_JSON_INT_DIGITS
    assert parse_json_body(f'{{"a": [{limit}, -{limit}, -0]}}'.encode()) == {"a": [int(limit), -int(limit), 0]}
    (value,) = parse_json_body(f"[{HUGE}]".encode())
    assert not isinstance(value, int) and "5000 digits" in value.describe()
    with pytest.raises(RequestError) as info:
        parse_json_body(b"[1, 2")
    assert info.value.status == 400


def _raw_get(port: int, path: str, headers: dict[str, str], method: str = "GET", body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _port(client: Client) -> int:
    return int(client.base.rsplit(":", 1)[1])


FOREIGN_ORIGINS = [
    "http://evil.example",
    "https://127.0.0.1:{port}",
    "http://127.0.0.1:{other}",
    "http://127.0.0.1",
    "http://localhost.evil.example:{port}",
    "http://127.0.0.1:{port}.evil.example",
    "null",
    "",
]


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_foreign_origin_is_refused_on_every_api_route(served, origin: str) -> None:
    client, session, out = served
    port = _port(client)
    origin = origin.format(port=port, other=port + 1 if port < 65535 else port - 1)
    base = {"Host": f"127.0.0.1:{port}", "Origin": origin}
    body = json.dumps({"id": "compare-0-0-1", "choice": 0}).encode()
    requests = [
        ("GET", "/api/state", None),
        ("HEAD", "/api/state", None),
        ("POST", "/api/answer", body),
        ("POST", "/api/skip", json.dumps({"id": "compare-0-0-1"}).encode()),
        ("POST", "/api/undo", b"{}"),
        ("OPTIONS", "/api/answer", None),
    ]
    for method, path, data in requests:
        headers = dict(base, **({"Content-Type": "application/json"} if data is not None else {}))
        status, reply_headers, reply = _raw_get(port, path, headers, method, data)
        assert status == 403, (method, path, origin, reply)
        assert not any(name.lower().startswith("access-control-") for name in reply_headers)
        if method != "HEAD":
            assert "Origin" in json.loads(reply)["error"]
    assert out.read_bytes() == b"" and session.state()["done"] == 0
    # the static page itself stays readable (it holds no data); the API does not
    status, _, page = _raw_get(port, "/", base)
    assert status == 200 and b"<html" in page.lower()


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST"])
def test_own_origin_is_accepted(served, name: str) -> None:
    client, _, out = served
    port = _port(client)
    headers = {"Host": f"127.0.0.1:{port}", "Origin": f"http://{name}:{port}"}
    status, reply_headers, reply = _raw_get(port, "/api/state", headers)
    assert status == 200 and json.loads(reply)["done"] == 0
    assert not any(name.lower().startswith("access-control-") for name in reply_headers)
    headers["Content-Type"] = "application/json"
    status, _, reply = _raw_get(port, "/api/answer", headers, "POST", b'{"id": "compare-0-0-1", "choice": 1}')
    assert status == 200 and json.loads(reply)["done"] == 1
    assert len(lines(out)) == 1


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.2:{port}", "", "[::2]:{port}"])
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/state"])
def test_foreign_host_is_refused_on_pages_and_api(served, host: str, path: str) -> None:
    client, _, _ = served
    port = _port(client)
    status, _, reply = _raw_get(port, path, {"Host": host.format(port=port)})
    assert status == 403 and "Host" in json.loads(reply)["error"]


def test_other_methods_are_405_without_cors(served) -> None:
    client, session, out = served
    port = _port(client)
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, reply = _raw_get(port, "/api/answer", {"Host": f"127.0.0.1:{port}"}, method, b"{}")
        assert status == 405 and headers["Allow"] == "GET, HEAD, POST" and "not allowed" in json.loads(reply)["error"]
        assert not any(name.lower().startswith("access-control-") for name in headers)
    assert out.read_bytes() == b"" and session.state()["done"] == 0


@pytest.mark.parametrize(
    ("length_headers", "status"),
    [
        (["1_0"], 400),
        (["+10"], 400),
        (["1e1"], 400),
        (["-1"], 400),
        (["\u00b2"], 400),  # a Unicode digit: str.isdigit() is true, int() fails
        (["9" * 40], 400),
        (["10", "12"], 400),  # conflicting headers
    ],
)
@pytest.mark.parametrize("path", ["/api/answer", "/api/nothing"])
def test_content_length_must_be_a_plain_bounded_number(
    served, capfd, path: str, length_headers: list[str], status: int
) -> None:
    client, session, out = served
    port = _port(client)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    head += "".join(f"Content-Length: {value}\r\n" for value in length_headers) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + b'{"id": "compare-0-0-1", "choice": 0}')
        reply = _read_all(sock)
    expected = 404 if path == "/api/nothing" else status
    assert reply.startswith(f"HTTP/1.0 {expected} ".encode()), reply[:200]
    assert b'"error"' in reply
    assert out.read_bytes() == b"" and session.state()["done"] == 0
    assert "Traceback" not in capfd.readouterr().err


def test_transfer_encoding_is_refused(served) -> None:
    client, _, out = served
    port = _port(client)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\n{}   \r\n0\r\n\r\n".encode()
        )
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.0 411 ") and b"Transfer-Encoding" in reply
    assert out.read_bytes() == b""


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_server_settings_are_validated(tmp_path: Path) -> None:
    with FeedbackWriter(tmp_path / "fb.jsonl") as writer:
        session = LabelSession(build_items(GENERATIONS, "compare"), writer)
        for bad in (0, -1, float("nan"), float("inf"), True, "5"):
            with pytest.raises(ConfigError, match="request_timeout"):
                LabelServer(session, port=0, request_timeout=bad)
        with pytest.raises(ConfigError, match="port"):
            LabelServer(session, port=True)


@pytest.mark.parametrize(
    ("site", "status"), [("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)]
)
def test_sec_fetch_site_is_checked_without_origin(served, site: str, status: int) -> None:
    client, _, _ = served
    port = _port(client)
    got, _, reply = _raw_get(port, "/api/state", {"Host": f"127.0.0.1:{port}", "Sec-Fetch-Site": site})
    assert got == status, reply
    if status == 403:
        assert "Sec-Fetch-Site" in json.loads(reply)["error"]
    assert _raw_get(port, "/", {"Host": f"127.0.0.1:{port}", "Sec-Fetch-Site": site})[0] == 200  # pages stay readable


def test_session_api_rejects_non_int_values_without_crashing(tmp_path: Path) -> None:
    """The Python API (used by the oracle) validates like HTTP: a RequestError, never a TypeError."""
    from agents.rlhf.label_server import RequestError

    out = tmp_path / "fb.jsonl"
    with FeedbackWriter(out) as writer:
        session = LabelSession(build_items(GENERATIONS, "compare"), writer)
        for bad in (1.0, 0.0, True, 10**5000, complex(1, 0), (1,)):
            with pytest.raises(RequestError) as info:
                session.answer({"id": "compare-0-0-1", "choice": bad})
            assert info.value.status == 400 and info.value.field == "choice" and len(info.value.got) <= 80
        for bad_id in (0, None, 10**5000, ("compare-0-0-1",)):
            with pytest.raises(RequestError) as info:
                session.skip({"id": bad_id})
            assert info.value.status == 400 and info.value.field == "id"
        assert session.state()["done"] == 0
        session.answer({"id": "compare-0-0-1", "choice": 1})
    assert [row["id"] for row in lines(out)] == ["compare-0-0-1"]
