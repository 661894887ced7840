"""`predictions.jsonl`: the file `eval bench` answers into, one JSON object per (sample, run), and that resuming,
`eval length-groups` and the model card read back.

The bench appends one batch at a time, in a single synced write, so an interruption can cut at most the last line
short: reading ignores such a line (with a warning) and resuming removes it. A broken line anywhere else is an
error. Input datasets get no such leniency (`pvm_qwen3vl.data` reads them strictly).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def append_predictions(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows in one write, flushed and synced, so that an interruption loses at most the rows being written."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """The rows of a `predictions.jsonl`, or of the one in a bench output folder."""
    path = Path(path)
    path = path / "predictions.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions file; give the predictions.jsonl written by `eval bench`.")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.extend([json.loads(line)] if line.strip() else [])
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from error
            logger.warning("%s: ignoring its incomplete last line (an interrupted write)", path)
    return rows


def answered(path: Path) -> set[tuple[str, int]]:
    """(id, run) pairs already in `path`; a last line cut by an interruption is removed from the file for good."""
    if not path.exists():
        return set()
    rows = read_predictions(path)
    if not path.read_text(encoding="utf-8").endswith("\n"):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return {(str(row["id"]), int(row["run"])) for row in rows}
