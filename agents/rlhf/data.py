"""Human-feedback data: the JSONL formats, a validating reader and a crash-safe appending writer.

File format
-----------
One JSON object per line (UTF-8, ``\\n``-terminated). Each line is one of:

* **preference** (the keys of TRL's preference datasets)::

      {"prompt": "...", "chosen": "...", "rejected": "..."}

* **rating** (``score`` is any finite number; ``textgen-rl label --mode rate`` writes 1..5)::

      {"prompt": "...", "completion": "...", "score": 4}

* **ranking** (best first, at least two completions; training expands it to every ordered pair,
  ``completions[i]`` preferred to ``completions[j]`` for ``i < j``)::

      {"prompt": "...", "completions": ["best", "middle", "worst"]}

* **control lines**, written by the labelling tool and honoured by every reader:

  - ``{"undo": "<id>"}`` cancels the most recent *live* (not yet undone) answer or skip whose
    ``"id"`` is ``<id>``;
  - ``{"skip": "<id>"}`` records that the labeller skipped item ``<id>`` (it holds no feedback
    but counts as handled, so a resumed session does not show the item again; it can be undone).

Any line may carry extra keys (``"id"``, ``"meta"``...); they are kept in ``.extra`` and written
back unchanged. ``"id"``, when present, must be a string. A file may mix all kinds of lines.

Why undo is a tombstone
-----------------------
The file is append-only: every answer is one ``write`` of ``line + "\\n"`` on a file opened in
append mode, followed by ``flush`` + ``fsync``. Undo appends ``{"undo": id}`` instead of
rewriting the file, so no operation ever removes or rewrites a byte that was already on disk:
a crash at any moment loses at most the line being written, and an undone answer stays
recoverable (drop the tombstone). The cost is that readers must replay the tombstones, which
:func:`read_feedback` does.

A crash in the middle of a ``write`` can leave a final line without its ``\\n``.
:class:`FeedbackWriter` truncates such a partial line away (with a warning) when it opens the
file, and :func:`read_feedback` ignores it (with a warning); a complete JSON object that only
lacks its newline is kept. Any other bad line is a :class:`~text_envs.errors.FeedbackFormatError`
whose message starts with ``file:line:``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from text_envs.atomic import write_bytes_atomic
from text_envs.errors import ConfigError, FeedbackFormatError

__all__ = [
    "PreferencePair",
    "Rating",
    "Ranking",
    "Skip",
    "Undo",
    "FeedbackData",
    "FeedbackRecord",
    "FeedbackWriter",
    "parse_record",
    "read_feedback",
    "iter_lines",
    "write_feedback",
    "ranking_to_pairs",
    "to_pairs",
]


@dataclass(frozen=True)
class PreferencePair:
    """``chosen`` was preferred to ``rejected`` as a continuation of ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str | None:
        return self.extra.get("id")

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, **self.extra}


@dataclass(frozen=True)
class Rating:
    """``completion`` (a continuation of ``prompt``) got the scalar ``score``."""

    prompt: str
    completion: str
    score: float
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str | None:
        return self.extra.get("id")

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "score": self.score, **self.extra}


@dataclass(frozen=True)
class Ranking:
    """``completions`` of ``prompt`` ordered from best to worst (at least two)."""

    prompt: str
    completions: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str | None:
        return self.extra.get("id")

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completions": list(self.completions), **self.extra}

    def to_pairs(self) -> list[PreferencePair]:
        return ranking_to_pairs(self)


@dataclass(frozen=True)
class Skip:
    """Control line: the labeller skipped item ``target``."""

    target: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return self.target

    def to_json(self) -> dict[str, Any]:
        return {"skip": self.target, **self.extra}


@dataclass(frozen=True)
class Undo:
    """Control line: cancel the latest live answer/skip with id ``target``."""

    target: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"undo": self.target, **self.extra}


FeedbackRecord = Union[PreferencePair, Rating, Ranking]
AnyLine = Union[PreferencePair, Rating, Ranking, Skip, Undo]


@dataclass
class FeedbackData:
    """The live content of a feedback file (undone lines removed), in file order per kind."""

    preferences: list[PreferencePair] = field(default_factory=list)
    ratings: list[Rating] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: Every live feedback record (preferences, ratings, rankings) in file order.
    records: list[FeedbackRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def to_pairs(self) -> list[PreferencePair]:
        return to_pairs(self)


# --------------------------------------------------------------------------- parsing


class _LineError(Exception):
    """A reason why one line is invalid (turned into FeedbackFormatError with file:line)."""


def _require_str(obj: Mapping[str, Any], key: str) -> str:
    if key not in obj:
        raise _LineError(f'missing key "{key}"')
    value = obj[key]
    if not isinstance(value, str):
        raise _LineError(f'"{key}" must be a string, got {type(value).__name__}')
    return value


_KINDS = {
    "preference": ("chosen", "rejected"),
    "rating": ("completion", "score"),
    "ranking": ("completions",),
    "undo": ("undo",),
    "skip": ("skip",),
}


def parse_record(obj: Any) -> AnyLine:
    """Validate one decoded JSON line (a dict) and return its typed record.

    Raises :class:`FeedbackFormatError` ``"<record>: reason"`` if it is not a valid line.
    """
    try:
        return _parse(obj)
    except _LineError as error:
        raise FeedbackFormatError(f"<record>: {error}") from None


def _parse(obj: Any) -> AnyLine:
    if not isinstance(obj, dict):
        raise _LineError(f"expected a JSON object, got {type(obj).__name__}")
    kinds = [kind for kind, keys in _KINDS.items() if any(key in obj for key in keys)]
    if not kinds:
        raise _LineError(
            'not a feedback line: expected "chosen"/"rejected" (preference), "completion"/"score" '
            '(rating), "completions" (ranking), "undo" or "skip"'
        )
    if len(kinds) > 1:
        raise _LineError(f"ambiguous line: has keys of several kinds ({', '.join(kinds)})")
    kind = kinds[0]
    if "id" in obj and not isinstance(obj["id"], str):
        raise _LineError(f'"id" must be a string, got {type(obj["id"]).__name__}')
    if kind in ("undo", "skip"):
        target = _require_str(obj, kind)
        if not target:
            raise _LineError(f'"{kind}" must be a non-empty item id')
        extra = {key: value for key, value in obj.items() if key != kind}
        return Undo(target, extra) if kind == "undo" else Skip(target, extra)
    prompt = _require_str(obj, "prompt")
    if kind == "preference":
        chosen = _require_str(obj, "chosen")
        rejected = _require_str(obj, "rejected")
        extra = {k: v for k, v in obj.items() if k not in ("prompt", "chosen", "rejected")}
        return PreferencePair(prompt, chosen, rejected, extra)
    if kind == "rating":
        completion = _require_str(obj, "completion")
        if "score" not in obj:
            raise _LineError('missing key "score"')
        score = obj["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise _LineError(f'"score" must be a number, got {type(score).__name__}')
        if not math.isfinite(score):
            raise _LineError(f'"score" must be finite, got {score}')
        extra = {k: v for k, v in obj.items() if k not in ("prompt", "completion", "score")}
        return Rating(prompt, completion, score, extra)
    completions = obj["completions"]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise _LineError('"completions" must be a list of strings')
    if len(completions) < 2:
        raise _LineError(f'"completions" must list at least 2 completions (best first), got {len(completions)}')
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "completions")}
    return Ranking(prompt, tuple(completions), extra)


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, AnyLine]]:
    """Yield ``(line_number, record)`` for every line of ``path`` (control lines included).

    Blank lines are ignored. A final line without ``\\n`` that is not valid JSON is a partial
    write from a crash: it is skipped with a warning. Any other bad line raises
    :class:`FeedbackFormatError` ``"file:line: reason"``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"feedback file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"feedback file {path} is a directory, expected a JSONL file") from None
    lines = raw.split(b"\n")
    last = len(lines) - 1  # lines[last] is what follows the final "\n" (b"" for a complete file)
    for index, line in enumerate(lines):
        number = index + 1
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8-sig" if index == 0 else "utf-8")  # tolerate a BOM
            obj = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if index == last:
                warnings.warn(f"{path}:{number}: ignoring a partial last line (interrupted write?)", stacklevel=2)
                return
            reason = "not valid UTF-8" if isinstance(error, UnicodeDecodeError) else f"not valid JSON ({error.msg})"
            raise FeedbackFormatError(f"{path}:{number}: {reason}") from None
        try:
            record = _parse(obj)
        except _LineError as error:
            raise FeedbackFormatError(f"{path}:{number}: {error}") from None
        yield number, record


class _Replay:
    """Applies lines in order, honouring undo tombstones; keeps the live entries."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, AnyLine] | None] = []  # None = undone
        self._by_id: dict[str, list[int]] = {}  # id -> indices into entries of its live lines

    def add(self, record: AnyLine) -> tuple[bool, str | None]:
        """Apply one line; returns (applied, undone_id)."""
        if isinstance(record, Undo):
            stack = self._by_id.get(record.target)
            if not stack:
                return False, None  # an undo without a live target is a no-op
            self.entries[stack.pop()] = None
            return True, record.target
        self.entries.append((len(self.entries), record))
        item_id = record.id
        if item_id is not None:
            self._by_id.setdefault(item_id, []).append(len(self.entries) - 1)
        return True, None

    def live(self) -> list[AnyLine]:
        return [entry[1] for entry in self.entries if entry is not None]

    def live_ids(self) -> list[str]:
        """Ids with at least one live answer or skip, ordered by their latest live line."""
        latest: dict[str, int] = {}
        for item_id, stack in self._by_id.items():
            if stack:
                latest[item_id] = stack[-1]
        return sorted(latest, key=latest.__getitem__)


def read_feedback(path: str | os.PathLike[str]) -> FeedbackData:
    """Read and validate a feedback JSONL file; undone answers and skips are left out."""
    replay = _Replay()
    for _number, record in iter_lines(path):
        replay.add(record)
    data = FeedbackData()
    for record in replay.live():
        if isinstance(record, Skip):
            data.skipped.append(record.target)
            continue
        data.records.append(record)
        if isinstance(record, PreferencePair):
            data.preferences.append(record)
        elif isinstance(record, Rating):
            data.ratings.append(record)
        else:
            data.rankings.append(record)
    return data


def ranking_to_pairs(ranking: Ranking) -> list[PreferencePair]:
    """All ``n*(n-1)/2`` pairs of a ranking: ``completions[i]`` beats ``completions[j]`` for i < j."""
    pairs = []
    items = ranking.completions
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            extra = {**ranking.extra, "from_ranking": [i, j]}
            pairs.append(PreferencePair(ranking.prompt, items[i], items[j], extra))
    return pairs


def to_pairs(data: FeedbackData | Iterable[AnyLine]) -> list[PreferencePair]:
    """Preference pairs of ``data``: its preferences plus every pair of each ranking (ratings ignored)."""
    records = data.records if isinstance(data, FeedbackData) else list(data)
    pairs: list[PreferencePair] = []
    for record in records:
        if isinstance(record, PreferencePair):
            pairs.append(record)
        elif isinstance(record, Ranking):
            pairs.extend(ranking_to_pairs(record))
    return pairs


def _encode(record: AnyLine | Mapping[str, Any]) -> tuple[AnyLine, bytes]:
    obj = record.to_json() if hasattr(record, "to_json") else dict(record)  # type: ignore[union-attr]
    try:
        parsed = _parse(obj)
    except _LineError as error:
        raise FeedbackFormatError(f"<record>: {error}") from None
    try:
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise FeedbackFormatError(f"<record>: not JSON-serialisable ({error})") from None
    return parsed, (line + "\n").encode("utf-8")


def write_feedback(path: str | os.PathLike[str], records: Iterable[AnyLine | Mapping[str, Any]]) -> None:
    """Write ``records`` to a new JSONL file atomically (temp file + ``os.replace``)."""
    write_bytes_atomic(path, b"".join(_encode(record)[1] for record in records))


# --------------------------------------------------------------------------- writer


class FeedbackWriter:
    """Appends feedback lines to a JSONL file, durably, one complete line per ``write``.

    Opening validates the existing file (a partial last line left by a crash is truncated away
    with a warning; any other bad line raises :class:`FeedbackFormatError`) and replays it, so
    :meth:`done_ids` tells which items are already answered or skipped (resume). The writer takes
    an exclusive ``flock`` on the file so two labelling sessions cannot interleave in it. It is
    thread-safe. Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise ConfigError(f"output {self.path} is a directory, expected a JSONL file path")
        if not self.path.parent.is_dir():
            raise ConfigError(f"output directory {self.path.parent} does not exist")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._lock_file()
            self._recover_partial_line()
            self._replay = _Replay()
            for _number, record in iter_lines(self.path):
                self._replay.add(record)
        except BaseException:
            os.close(self._fd)
            raise

    def _lock_file(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{self.path} is already open by another labelling session") from None

    def _recover_partial_line(self) -> None:
        raw = self.path.read_bytes()
        if not raw or raw.endswith(b"\n"):
            return
        cut = raw.rfind(b"\n") + 1  # start of the unterminated last line
        tail = raw[cut:]
        try:
            json.loads(tail.decode("utf-8"))
            complete = True
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if complete:  # the whole object made it to disk, only its newline did not
            self._write_bytes(b"\n")
            return
        line_number = raw.count(b"\n") + 1
        warnings.warn(
            f"{self.path}:{line_number}: removing a partial last line ({len(tail)} bytes) "
            "left by an interrupted write",
            stacklevel=3,
        )
        os.truncate(self.path, cut)

    def _write_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular-file write is complete in one call; loop only for safety
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    # ------------------------------------------------------------------ public API

    def append(self, record: FeedbackRecord | Skip | Mapping[str, Any]) -> AnyLine:
        """Validate ``record`` and append it as one line (flushed and fsynced). Returns the record."""
        parsed, line = _encode(record)
        if isinstance(parsed, Undo):
            raise FeedbackFormatError("<record>: use FeedbackWriter.undo() to undo an answer")
        with self._lock:
            self._check_open()
            self._write_bytes(line)
            self._replay.add(parsed)
        return parsed

    def skip(self, item_id: str, **extra: Any) -> Skip:
        """Record that item ``item_id`` was skipped."""
        return self.append(Skip(item_id, extra))  # type: ignore[return-value]

    def undo(self, among: Iterable[str] | None = None) -> str | None:
        """Cancel the most recent live answer or skip (restricted to ids in ``among`` if given).

        Appends an ``{"undo": id}`` tombstone and returns ``id``, or ``None`` if nothing to undo.
        """
        allowed = None if among is None else set(among)
        with self._lock:
            self._check_open()
            candidates = [i for i in self._replay.live_ids() if allowed is None or i in allowed]
            if not candidates:
                return None
            target = candidates[-1]
            _, line = _encode(Undo(target))
            self._write_bytes(line)
            self._replay.add(Undo(target))
            return target

    def done_ids(self) -> set[str]:
        """Ids of items that currently have a live answer or skip."""
        with self._lock:
            return set(self._replay.live_ids())

    def skipped_ids(self) -> set[str]:
        """Ids whose latest live line is a skip."""
        with self._lock:
            return {r.target for r in self._replay.live() if isinstance(r, Skip)}

    def records(self) -> list[AnyLine]:
        """Live lines (answers and skips) in file order."""
        with self._lock:
            return self._replay.live()

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"FeedbackWriter for {self.path} is closed")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # also releases the flock
                self._fd = -1

    def __enter__(self) -> FeedbackWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
