"""What every figure shares: its description, the context it runs in, its runs, and its outputs.

A figure module defines ``FIGURE = Figure(name, reproduces, ..., make=make)``. ``make(ctx)`` asks
``ctx.sweep(...)`` for the runs it needs (cached through their hash-named folders, so a second call
re-plots at once and figures that need the same run share it), reads their summaries, and returns
a ``Result``: the matplotlib figure, the tidy rows behind it, and its caption. ``write_outputs``
writes ``NAME.png``, ``NAME.pdf``, ``NAME.csv``, ``NAME.json`` and ``NAME.md`` (the caption).
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from training.engine.checkpoint import atomic_write_bytes, atomic_write_text, csv_text
from training.errors import UserError

SCALES = ("tiny", "small", "paper")
SCALE_HELP = {"tiny": "seconds per figure, to check the pipeline (CI); its numbers mean nothing",
              "small": "MNIST-1D, minutes per figure on a laptop CPU (the default)",
              "paper": "the paper's own setup through the presets (CIFAR-10 etc. from --data-dir, GPU)"}
VERDICTS = ("holds", "partly", "does not show at this scale", "not checked at this scale")


class FigureError(UserError):
    """A figure could not be made (a run failed, data is missing): one line for the user."""


@dataclass
class Caption:
    """What the paper claims (with its number), what this figure's runs show (with ours), and
    whether the claim holds here (one of ``VERDICTS``); ``setup`` says what was run and why those
    settings were chosen."""

    claim: str
    ours: str
    verdict: str
    setup: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def markdown(self) -> str:
        """The caption as Markdown paragraphs."""
        parts = [f"**Paper.** {self.claim}", f"**Here.** {self.ours}", f"**Verdict:** {self.verdict}."]
        if self.setup:
            parts.append(f"**Setup.** {self.setup}")
        return "\n\n".join(parts)


@dataclass
class Result:
    """What ``make`` returns: the figure, every plotted number as tidy rows (one row per point,
    plain values, for pandas), the caption, and any extra facts for the JSON."""

    figure: Any
    rows: list[dict]
    caption: Caption
    extra: dict = field(default_factory=dict)
    table: str = ""  # a Markdown table shown under the caption (e.g. a paper's table, recomputed)


@dataclass
class Context:
    """Where and how a figure runs: its scale, the runs folder shared by all figures, the sweep
    backend and the flags every run gets. ``sweep`` records the run folders a figure used."""

    scale: str = "small"
    runs: Path = Path("runs")
    data_dir: Optional[str] = None
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True
    backend: dict = field(default_factory=lambda: {"backend": "local"})  # run_grid's backend options
    used: dict = field(default_factory=dict)  # run folder -> its config.json

    def pick(self, tiny: Any, small: Any, paper: Any) -> Any:
        """The value for this context's scale."""
        return {"tiny": tiny, "small": small, "paper": paper}[self.scale]

    def common_flags(self, command: str) -> list[str]:
        """Flags every run of this context gets (controls write under their run and take no ``--out``).
        Figures sweep into collapse on purpose (their runs' summaries still mark a level at chance), so
        such a level does not stop a run: ``--allow-diverged``."""
        flags = ["--no-progress", "--device", self.device]
        if command != "control":
            flags += ["--out", str(self.runs), "--allow-diverged"]
        if self.data_dir:
            flags += ["--data-dir", self.data_dir]
        if self.threads is not None:
            flags += ["--threads", str(self.threads)]
        return flags

    def sweep(self, command: str, grid: dict[str, Sequence[Any]], base: Sequence[str] = ()) -> list[Path]:
        """Run ``command`` at every point of ``grid`` with flags ``base`` (finished runs are read back
        from their folders, unfinished ones resume); return the run folders in grid order (the first
        field varies slowest). ``FigureError`` naming the first failed run."""
        from training.sweep import run_grid

        if not grid:  # one run: a grid of one point over a flag the command always has
            grid = {"device": [self.device]}
        runs, _ = run_grid(command, grid, [*base, *self.common_flags(command)], progress=self.progress,
                           **self.backend)
        for r in runs:
            if r.status != "done":
                raise FigureError(f"the run `{' '.join(r.argv)}` failed: {r.error}")
        folders = [Path(r.folder) for r in runs]
        for folder in folders:
            self.used[str(folder)] = _config_of(folder)
        return folders

    def run(self, command: str, base: Sequence[str] = ()) -> Path:
        """One run (``sweep`` of a single point); its folder."""
        return self.sweep(command, {}, base)[0]


def _config_of(folder: Path) -> Optional[dict]:
    """A run's ``config.json``, or a ticket search index's ``config``."""
    try:
        if folder.is_file():
            return json.loads(folder.read_text()).get("config")
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Figure:
    """One figure of the gallery.

    ``name``: the command-line name; ``title``: what it shows; ``reproduces``: the paper (author,
    title) and its figure or table; ``small_minutes``: measured minutes at the small scale on 2 CPU
    cores, runs included; ``make``: builds the ``Result`` in a ``Context``; ``paper_datasets``: the
    datasets its paper scale needs, checked before any work."""

    name: str
    title: str
    reproduces: str
    small_minutes: float
    make: Callable[[Context], Result]
    paper_datasets: tuple[str, ...] = ("cifar10",)  # what --scale paper reads from --data-dir


def summary(folder: Path) -> dict:
    """A run's (or control branch's) ``summary.json``."""
    return json.loads((Path(folder) / "summary.json").read_text())


def levels(folder: Path) -> list[dict]:
    """A run's per-level summaries (``level``, ``density`` as a fraction, ``test_accuracy`` as a
    fraction, ``cumulative_backprop_macs``, ...), in level order."""
    return summary(folder)["levels"]


def config(folder: Path) -> dict:
    """A run's ``config.json``."""
    return json.loads((Path(folder) / "config.json").read_text())


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def pct(value: float, sd: Optional[float] = None) -> str:
    """``0.912`` -> ``"91.2 %"``; with ``sd``: ``"91.2 ± 1.3 %"``."""
    return f"{100 * value:.1f} %" if sd is None else f"{100 * value:.1f} ± {100 * sd:.1f} %"


def _json_safe(value: Any) -> Any:
    """Non-finite floats as None, so that the JSON is strict; Paths as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def write_outputs(figure: Figure, result: Result, ctx: Context, out: Path, seconds: float) -> dict:
    """Write ``NAME.png``, ``.pdf``, ``.csv``, ``.json`` (provenance) and ``.md`` (caption) under
    ``out``, each atomically; return the JSON record."""
    from analysis.figure_io import pyplot
    from training.engine.provenance import provenance

    stem = out / figure.name
    if ctx.scale == "tiny":  # a pipeline check: its runs are far too short to say anything
        result.caption.verdict = "not checked at this scale"
        result.caption.ours = "(Tiny scale, a check of the pipeline: these numbers mean nothing.) " + result.caption.ours
    for suffix, dpi in ((".png", 130), (".pdf", None)):
        buffer = io.BytesIO()
        result.figure.savefig(buffer, format=suffix[1:], dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(stem.with_suffix(suffix), buffer.getvalue())
    pyplot().close(result.figure)
    atomic_write_text(stem.with_suffix(".csv"), csv_text(result.rows))
    record = {
        "figure": figure.name, "title": figure.title, "reproduces": figure.reproduces, "scale": ctx.scale,
        "caption": {"claim": result.caption.claim, "ours": result.caption.ours,
                    "verdict": result.caption.verdict, "setup": result.caption.setup},
        "wall_seconds": round(seconds, 1), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backend": ctx.backend, "threads": ctx.threads, "device": ctx.device,
        "provenance": provenance(), "runs": ctx.used, **result.extra,
    }
    if result.table:
        record["table"] = result.table
    atomic_write_text(stem.with_suffix(".json"), json.dumps(_json_safe(record), indent=1, allow_nan=False) + "\n")
    atomic_write_text(stem.with_suffix(".md"), f"# {figure.title}\n\n*{figure.reproduces}*\n\n"
                      f"![{figure.name}]({figure.name}.png)\n\n{result.caption.markdown()}\n"
                      + (f"\n{result.table}\n" if result.table else ""))
    return record
