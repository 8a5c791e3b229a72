"""JSON lines: one event a line, flushed as written, so `tail -f` and `jq` see it at once.

    with JsonlWriter("/var/log/av-emotion/events.jsonl") as w:   # "-" writes to stdout
        w.write({"t": time.time(), "emotion": "happy", "probs": {"fused": np.array(...)}})
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)


def to_jsonable(obj: Any) -> Any:
    """`json.dumps` default= hook: numpy scalars and arrays, paths, sets/tuples."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def dumps(event: Any) -> str:
    """One compact JSON line (no newline); numpy values become plain numbers/lists; NaN becomes null."""
    text = json.dumps(event, default=to_jsonable, separators=(",", ":"), allow_nan=True)
    if "NaN" in text or "Infinity" in text:  # strict JSON readers (browsers, jq) reject them
        text = json.dumps(_nan_to_none(json.loads(text)), separators=(",", ":"))
    return text


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


class JsonlWriter:
    """Appends one JSON object a line to a file (``-`` = stdout), flushing every line."""

    def __init__(self, path_or_dash: str | Path):
        self.path = str(path_or_dash)
        self._own = self.path != "-"
        if self._own:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._f: IO[str] = open(self.path, "a", encoding="utf-8")  # closed by close()
            except OSError as e:
                raise OSError(e.errno, f"cannot open JSON lines output {self.path!r} for appending: "
                                       f"{e.strerror or e}") from e
        else:
            self._f = sys.stdout

    def write(self, event: dict) -> None:
        self._f.write(dumps(event) + "\n")
        self._f.flush()

    __call__ = write

    def close(self) -> None:
        if self._own and not self._f.closed:
            self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
