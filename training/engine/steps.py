"""Training lengths and points in training written as ``"500it"``, ``"2ep"`` or ``"0"``.

One type for both units means a rewind point, a run length or an evaluation cadence is a single
field, converted to iterations only once the number of iterations per epoch is known.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from training.errors import UserError

_PATTERN = re.compile(r"^\s*(\d+)\s*(it|ep)?\s*$")


@dataclass(frozen=True)
class Step:
    """A point in training: ``value`` iterations (``unit="it"``) or epochs (``unit="ep"``)."""

    value: int
    unit: str = "it"

    @classmethod
    def parse(cls, text: str | int, what: str = "step") -> "Step":
        """Parse ``"500it"``, ``"2ep"`` or a bare integer (iterations; only ``0`` reads naturally)."""
        if isinstance(text, int):
            text = str(text)
        match = _PATTERN.match(str(text))
        if not match:
            raise UserError(
                f"{what} {text!r} is not a step: write iterations as '500it', epochs as '2ep', or 0"
            )
        value, unit = int(match.group(1)), match.group(2) or "it"
        return cls(value, unit)

    def iterations(self, iterations_per_epoch: int) -> int:
        """Return this step as a number of optimizer iterations."""
        return self.value * iterations_per_epoch if self.unit == "ep" else self.value

    def __str__(self) -> str:
        return f"{self.value}{self.unit}"


def parse_steps(text: str, what: str = "step list") -> list[Step]:
    """Parse a comma-separated list such as ``"80ep,120ep"``; the empty string gives ``[]``."""
    return [Step.parse(part, what) for part in text.split(",") if part.strip()]
