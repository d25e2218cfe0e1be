"""The run's metrics log: one JSON object per line, appended and flushed as training runs."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from training.engine.checkpoint import atomic_write_text


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; pandas reads null as NaN
    return value


class MetricsLog:
    def __init__(self, path: Path, mirror=None):
        self.path = Path(path)
        self.mirror = mirror  # training.engine.loggers.Mirror: TensorBoard, W&B, MLflow (--log)

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
            f.flush()
        if self.mirror is not None:
            self.mirror.write(record)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after it is unreliable
        return records

    def keep_only(self, keep: Callable[[dict], bool]) -> None:
        """Rewrite the log with the records ``keep`` accepts (used when a run resumes)."""
        if self.path.exists():
            kept = [r for r in self.read() if keep(r)]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if self.mirror is not None:
            self.mirror.restart(self.read())
