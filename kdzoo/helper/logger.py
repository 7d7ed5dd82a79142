"""Per-run logs: TensorBoard scalars and a JSON-lines metrics file, written by rank 0 only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLogger:
    """Logs one row of metrics per epoch to ``<run_dir>/metrics.jsonl`` and TensorBoard
    (``<run_dir>/tensorboard``). A resumed run first drops rows past the checkpoint's epoch, so the
    file never holds an epoch twice. Does nothing when ``enabled`` is false (ranks > 0)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_epoch: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["epoch"] <= resume_epoch]
            self.path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_epoch + 1)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        epoch = row["epoch"]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace("_", "/", 1), value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
