"""Per-run logs: TensorBoard scalars and a JSON-lines metrics file, written by rank 0 only."""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write


def _parsed_rows(lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) of each complete row; a torn line (a process killed or a disk filled mid-write)
    is skipped."""
    rows = []
    for line in lines:
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return rows


class RunLogger:
    """Logs one row of metrics per epoch to ``<run_dir>/metrics.jsonl`` and TensorBoard
    (``<run_dir>/tensorboard``). A resumed run first drops rows past the checkpoint's epoch (and any
    torn line), so the file never holds an epoch twice. Does nothing when ``enabled`` is false
    (ranks > 0). A write that fails (``OSError``) leaves ``metrics.jsonl`` as it was."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_epoch: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line, row in _parsed_rows(self.path.read_text().splitlines())
                    if row["epoch"] <= resume_epoch]
            text = "".join(line + "\n" for line in kept).encode()
            atomic_write(self.path, lambda f: f.write(text))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_epoch + 1)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = (json.dumps(row) + "\n").encode()
        with self.path.open("ab", buffering=0) as f:
            size = f.tell()
            try:
                if f.write(line) != len(line):
                    raise OSError(errno.ENOSPC, "short write (is the disk full?)", str(self.path))
            except OSError:
                f.truncate(size)  # no torn row left behind
                raise
        epoch = row["epoch"]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace("_", "/", 1), value, epoch)
        self.writer.flush()

    def close(self) -> None:
        """Close TensorBoard's file. Called when a run ends, also after a failed write: a failure here
        is reported as a warning, so that it does not hide why the run ended."""
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as err:
                print(f"warning: the TensorBoard log in {self.path.parent / 'tensorboard'} may lack its last "
                      f"events: {err}", file=sys.stderr)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
