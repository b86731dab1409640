"""Feedback JSONL formats: round-trips, validation errors with file:line, rankings -> pairs,
the crash-safe writer (resume, partial last line, undo tombstones)."""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import pytest

from agents.rlhf.data import (
    FeedbackData,
    FeedbackWriter,
    PreferencePair,
    Ranking,
    Rating,
    iter_lines,
    ranking_to_pairs,
    read_feedback,
    to_pairs,
    write_feedback,
)
from text_envs.errors import ConfigError, FeedbackFormatError


def write_lines(path: Path, lines: list[str], *, final_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- formats


def test_preference_round_trip_keeps_extra_keys(tmp_path: Path) -> None:
    records = [
        PreferencePair("The film was", " great.", " bad.", {"id": "a", "meta": {"who": "me", "n": [1, 2]}}),
        PreferencePair("Héllo ✓", " wörld\nnew line", " \"quoted\"", {}),
    ]
    path = tmp_path / "prefs.jsonl"
    write_feedback(path, records)
    data = read_feedback(path)
    assert data.preferences == records
    assert [p.extra for p in data.preferences] == [r.extra for r in records]
    assert data.preferences[0].id == "a"
    assert data.ratings == [] and data.rankings == [] and len(data) == 2
    # TRL's key names on disk
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"prompt": "The film was", "chosen": " great.", "rejected": " bad.", "id": "a", "meta": {"who": "me", "n": [1, 2]}}


def test_rating_round_trip(tmp_path: Path) -> None:
    records = [Rating("p", " c1", 5, {"id": "r1"}), Rating("p", " c2", 1.5, {})]
    path = tmp_path / "ratings.jsonl"
    write_feedback(path, records)
    data = read_feedback(path)
    assert data.ratings == records
    assert data.ratings[0].score == 5 and data.ratings[1].score == 1.5


def test_ranking_round_trip_and_pairs(tmp_path: Path) -> None:
    ranking = Ranking("q", ("best", "mid", "worst"), {"id": "k1"})
    path = tmp_path / "rank.jsonl"
    write_feedback(path, [ranking])
    data = read_feedback(path)
    assert data.rankings == [ranking]
    pairs = ranking_to_pairs(ranking)
    assert [(p.chosen, p.rejected) for p in pairs] == [("best", "mid"), ("best", "worst"), ("mid", "worst")]
    assert all(p.prompt == "q" for p in pairs)
    assert pairs[0].extra["id"] == "k1" and pairs[2].extra["from_ranking"] == [1, 2]


def test_mixed_file_and_to_pairs(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            json.dumps({"prompt": "a", "chosen": "x", "rejected": "y"}),
            "",
            json.dumps({"prompt": "b", "completion": "z", "score": 3}),
            json.dumps({"prompt": "c", "completions": ["1", "2", "3", "4"]}),
        ],
    )
    data = read_feedback(path)
    assert isinstance(data, FeedbackData)
    assert (len(data.preferences), len(data.ratings), len(data.rankings)) == (1, 1, 1)
    assert [type(r).__name__ for r in data.records] == ["PreferencePair", "Rating", "Ranking"]
    pairs = to_pairs(data)
    assert len(pairs) == 1 + 6  # ratings are not pairs; a 4-ranking gives 6
    assert pairs == data.to_pairs()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"prompt": "p", "chosen": "a"}', 'missing key "rejected"'),
        ('{"chosen": "a", "rejected": "b"}', 'missing key "prompt"'),
        ('{"prompt": "p", "chosen": 1, "rejected": "b"}', '"chosen" must be a string'),
        ('{"prompt": "p", "completion": "c", "score": "5"}', '"score" must be a number'),
        ('{"prompt": "p", "completion": "c", "score": true}', '"score" must be a number'),
        ('{"prompt": "p", "completion": "c", "score": NaN}', '"score" must be finite'),
        ('{"prompt": "p", "completion": "c"}', 'missing key "score"'),
        ('{"prompt": "p", "completions": []}', "at least 2 completions"),
        ('{"prompt": "p", "completions": ["only"]}', "at least 2 completions"),
        ('{"prompt": "p", "completions": "ab"}', "list of strings"),
        ('{"prompt": "p", "completions": ["a", 2]}', "list of strings"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "completions": ["a", "b"]}', "ambiguous"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "id": 7}', '"id" must be a string'),
        ('{"prompt": "p"}', "not a feedback line"),
        ('["prompt", "chosen"]', "expected a JSON object"),
        ("{not json", "not valid JSON"),
        ('{"undo": 3}', '"undo" must be a string'),
    ],
)
def test_bad_line_reports_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path = write_lines(tmp_path / "bad.jsonl", [good, good, line, good])
    with pytest.raises(FeedbackFormatError) as info:
        read_feedback(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: "), message
    assert reason in message


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_feedback(tmp_path / "nope.jsonl")


def test_write_feedback_rejects_invalid_record_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(FeedbackFormatError, match="at least 2"):
        write_feedback(path, [PreferencePair("p", "a", "b"), {"prompt": "p", "completions": ["x"]}])
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- writer


def test_writer_appends_complete_lines_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "fb.jsonl"
    with FeedbackWriter(path) as writer:
        assert writer.done_ids() == set()
        writer.append({"id": "i1", "prompt": "p", "chosen": "a", "rejected": "b"})
        writer.append(Rating("p", "c", 4, {"id": "i2"}))
        writer.skip("i3")
        assert writer.done_ids() == {"i1", "i2", "i3"}
        assert writer.skipped_ids() == {"i3"}
        # every answer is on disk as soon as append returns
        assert path.read_text(encoding="utf-8").count("\n") == 3
    with FeedbackWriter(path) as writer:  # resume
        assert writer.done_ids() == {"i1", "i2", "i3"}
        writer.append({"id": "i4", "prompt": "p", "completions": ["x", "y"]})
    data = read_feedback(path)
    assert [r.id for r in data.records] == ["i1", "i2", "i4"]
    assert data.skipped == ["i3"]


def test_writer_rejects_invalid_record_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "fb.jsonl"
    with FeedbackWriter(path) as writer:
        writer.append({"id": "i1", "prompt": "p", "chosen": "a", "rejected": "b"})
        before = path.read_bytes()
        for bad in ({"id": "x", "prompt": "p", "chosen": "a"}, {"prompt": 1, "completion": "c", "score": 1}, {"undo": "i1"}):
            with pytest.raises(FeedbackFormatError):
                writer.append(bad)
        with pytest.raises(FeedbackFormatError, match="serialisable"):
            writer.append({"id": "y", "prompt": "p", "chosen": "a", "rejected": "b", "meta": {"x": object()}})
        assert path.read_bytes() == before
        assert writer.done_ids() == {"i1"}


def test_writer_recovers_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "fb.jsonl"
    good = json.dumps({"id": "i1", "prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
    path.write_bytes(good.encode() + b'{"id": "i2", "prompt": "p", "cho')  # crash mid-write
    with pytest.warns(UserWarning, match=r"fb.jsonl:2: .*partial last line"):
        data = read_feedback(path)  # readers ignore it too
    assert [r.id for r in data.records] == ["i1"]
    with pytest.warns(UserWarning, match="partial last line"):
        writer = FeedbackWriter(path)
    with writer:
        assert path.read_bytes() == good.encode()  # truncated back to the last complete line
        assert writer.done_ids() == {"i1"}
        writer.append({"id": "i2", "prompt": "p", "chosen": "a", "rejected": "b"})
    assert [r.id for r in read_feedback(path).records] == ["i1", "i2"]


def test_writer_keeps_complete_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "fb.jsonl"
    line = json.dumps({"id": "i1", "prompt": "p", "chosen": "a", "rejected": "b"})
    path.write_text(line, encoding="utf-8")  # e.g. edited by hand
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with FeedbackWriter(path) as writer:
            assert writer.done_ids() == {"i1"}
            writer.skip("i2")
    assert path.read_text(encoding="utf-8") == line + "\n" + json.dumps({"skip": "i2"}) + "\n"


def test_writer_refuses_corrupt_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "fb.jsonl", ['{"prompt": "p", "chosen": "a", "rejected": "b"}', "garbage", "{}"])
    before = path.read_bytes()
    with pytest.raises(FeedbackFormatError, match=r"fb.jsonl:2: not valid JSON"):
        FeedbackWriter(path)
    assert path.read_bytes() == before


def test_writer_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        FeedbackWriter(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        FeedbackWriter(tmp_path / "missing" / "fb.jsonl")


def test_undo_appends_tombstone_and_readers_honour_it(tmp_path: Path) -> None:
    path = tmp_path / "fb.jsonl"
    with FeedbackWriter(path) as writer:
        writer.append({"id": "a", "prompt": "p", "chosen": "1", "rejected": "2"})
        writer.append({"id": "b", "prompt": "p", "chosen": "3", "rejected": "4"})
        writer.skip("c")
        assert writer.undo() == "c"  # the latest live entry, a skip
        assert writer.undo() == "b"
        assert writer.done_ids() == {"a"}
        writer.append({"id": "b", "prompt": "p", "chosen": "4", "rejected": "3"})  # re-answered
        assert writer.undo(among={"a"}) == "a"  # restricted to some ids
        assert writer.undo(among={"zzz"}) is None
        assert writer.done_ids() == {"b"}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # nothing was ever removed from the file: 4 answers/skips + 3 tombstones
    assert len(lines) == 7
    assert [line.get("undo") for line in lines if "undo" in line] == ["c", "b", "a"]
    data = read_feedback(path)
    assert [(p.id, p.chosen) for p in data.preferences] == [("b", "4")]
    assert data.skipped == []
    with FeedbackWriter(path) as writer:  # state survives a restart
        assert writer.done_ids() == {"b"}
        assert writer.undo() == "b"
        assert writer.undo() is None
    assert read_feedback(path).records == []


def test_undo_without_live_target_is_ignored_by_readers(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "fb.jsonl",
        [
            json.dumps({"undo": "ghost"}),
            json.dumps({"id": "a", "prompt": "p", "chosen": "1", "rejected": "2"}),
            json.dumps({"undo": "a"}),
            json.dumps({"undo": "a"}),  # second undo of the same id: nothing left to cancel
        ],
    )
    assert read_feedback(path).records == []
    assert [type(r).__name__ for _, r in iter_lines(path)] == ["Undo", "PreferencePair", "Undo", "Undo"]


def _hold_lock(path: str, ready, release) -> None:  # pragma: no cover - runs in a child process
    with FeedbackWriter(path):
        ready.set()
        release.wait(20)


def test_second_writer_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fb.jsonl"
    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    child.start()
    try:
        assert ready.wait(20)
        with pytest.raises(ConfigError, match="already open by another labelling session"):
            FeedbackWriter(path)
    finally:
        release.set()
        child.join(20)
    with FeedbackWriter(path):  # free again
        pass
