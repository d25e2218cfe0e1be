"""``python -m training runs [ROOT]``: the run folders under ROOT (default ``runs/``), one row each.

A row says what the folder is (command, the hyperparameters that differ from their defaults),
how far it got (levels done of the levels its latest start asked for) and in what state it is:

- ``running``: a process holds the folder's lock (its PID is shown);
- ``diverged``: its ``summary.json`` marks a level as diverged (at chance), or the run as a whole
  (a NaN or infinite loss stopped a level: the reason says where);
- ``stopped``: fewer levels done than asked for, or a level started and not finished;
- ``complete``: every level asked for is done (a folder whose start did not record how many
  levels it asked for counts as complete when no level was left half-done);
- ``damaged``: ``config.json`` or ``summary.json`` is missing or cannot be read (the reason says
  which); such a folder is listed, never a traceback.

The settings are the hyperparameters, the execution settings that are part of the run's identity
(``--threads``, ``--precision``, ... : ``training.hparams.ExecutionHparams``) and an algorithm's
own settings (``config.json``'s ``cs``, ``iss``, ``edge_popup``: ``ALGORITHM_HPARAMS``) that differ
from their defaults; ``--where`` takes all of their names. Levels done count the levels of
``summary.json``, or, for a folder that writes none (an analysis branch), the finished levels
(``level_L/final.pt``); levels planned are those the latest start asked for, at least those done.

Branches (``RUN/branches/NAME-HASH/``: controls, instability copies, ...) are listed right after
their parent. ``compress`` folders (``compress-HASH/``) get a row of their own, read from their
``compression.json`` (complete when it exists). Only ``config.json``, ``summary.json``,
``compression.json`` and the small sweep and ticket-search index files are read, never a
checkpoint, so listing hundreds of runs takes a moment.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import fcntl
import importlib
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from training.commands import Command
from training.errors import UserError
from training.hparams import SECTIONS, ExecutionHparams

RUN_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*-[0-9a-f]{12}$")  # ALGORITHM-HASH, NAME-HASH
STATUSES = ("complete", "running", "stopped", "diverged", "damaged")
MAX_DEPTH = 4  # folders below ROOT searched for run folders (``--out runs/EXPERIMENT``)
# columns of every row (CSV/JSON), before the densities, the level's own fields and the hyperparameters
RUN_COLUMNS = ("folder", "parent", "command", "status", "pid", "reason", "levels_done", "levels_planned")
TAIL_COLUMNS = ("settings", "identity", "indexes", "started")
# config.json keys where an algorithm keeps its own hyperparameters (every field, defaults included),
# and the dataclass that holds their defaults: "module:class", imported when a folder has the key
ALGORITHM_HPARAMS = {
    "cs": "training.algorithms.continuous_sparsification:CSHparams",
    "iss": "training.algorithms.stochastic_sparsification:ISSHparams",
    "edge_popup": "training.algorithms.edge_popup:EdgePopupHparams",
}
COMPRESS_REPORT = "compression.json"  # what a finished ``compress`` folder holds (training/compression)


@dataclass
class RunRow:
    """What ``python -m training runs`` knows of one run folder, read from its JSON files alone.

    ``values`` holds every hyperparameter, execution setting and algorithm setting (defaults
    included) by field name; ``levels`` the ``summary.json`` entries (accuracies are fractions in
    [0, 1], densities fractions of the prunable weights); ``result`` the final numbers of a folder
    without levels (a ``compress`` folder: its Huffman-coded network's test accuracy and density)."""

    folder: Path
    parent: Optional[Path] = None  # the run a branch was trained from
    command: str = ""
    status: str = "damaged"
    pid: Optional[str] = None
    reason: str = ""
    levels_done: Optional[int] = None
    levels_planned: Optional[int] = None
    settings: str = ""
    identity: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    levels: list = field(default_factory=list)
    indexes: list = field(default_factory=list)
    started: Optional[str] = None
    result: dict = field(default_factory=dict)

    def last(self) -> dict:
        """The numbers the row reports: its last level's ``summary.json`` entry, else ``result``."""
        return self.levels[-1] if self.levels else self.result

    def lookup(self) -> dict:
        """The row's own columns and every hyperparameter, by name (the names ``--where`` takes)."""
        own = {name: getattr(self, name) for name in RUN_COLUMNS}
        own.update(folder=str(self.folder), parent=None if self.parent is None else str(self.parent),
                   algorithm=self.command, index=self.indexes)
        identity = dict(item.split("=", 1) for item in self.identity if "=" in item)
        return {**identity, **self.values, **own}


# ---------------------------------------------------------------------------------------------
# Reading one folder


def lock_holder(folder: Path) -> Optional[str]:
    """The PID (as written in ``FOLDER/.lock``) of the process working in ``folder``, or None when
    no process holds its lock. The lock is tested by taking it shared and non-blocking, released
    at once; nothing is created."""
    from training.engine.runs import LOCK_NAME, _read_holder

    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError:
            return None  # a file system without locks: nobody can be told to hold it
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if value is None:
        return "none"
    text = str(value)
    return repr(text) if (not text or " " in text) else text


def _differs(value: Any, default: Any) -> bool:
    return value != default or isinstance(value, bool) != isinstance(default, bool)


def _values_and_settings(config: dict) -> tuple[dict, list[str]]:
    """Every hyperparameter and execution setting of ``config`` (config.json's ``config``) by field
    name, and ``name=value`` for the hyperparameters that differ from their defaults (fields a
    folder lacks sit at their defaults, as in the run's hash), then for the execution settings
    that are part of the run's identity."""
    values: dict = {}
    changed: list[str] = []
    for section_name, kind in SECTIONS.items():
        section = config.get(section_name)
        if section is not None and not isinstance(section, dict):
            raise TypeError(f"config section {section_name} is not a mapping")
        for f in fields(kind):
            if section is None:
                values[f.name] = None
                continue
            value = section.get(f.name, f.default)
            values[f.name] = value
            if _differs(value, f.default):
                changed.append(f"{f.name}={_format(value)}")
    execution, in_identity = _execution(config.get("execution"))
    values.update(execution)
    return values, changed + in_identity


def _execution(stored: Any) -> tuple[dict, list[str]]:
    """Every execution setting of config.json's ``execution`` (all at their defaults in a folder made
    before they were recorded) by name, and ``name=value`` for those in the run's identity: a
    setting is listed when putting it back to its default changes ``ExecutionHparams.identity()``
    (so the CPU threads of a GPU run, which change nothing it computes, are not)."""
    if stored is not None and not isinstance(stored, dict):
        raise TypeError("config section execution is not a mapping")
    known = {f.name: f for f in fields(ExecutionHparams)}
    settings = ExecutionHparams(**{k: v for k, v in (stored or {}).items() if k in known})
    values = dataclasses.asdict(settings)
    identity = settings.identity()
    shown = [f"{name}={_format(value)}" for name, value in values.items()
             if dataclasses.replace(settings, **{name: known[name].default}).identity() != identity]
    return values, shown


def _hparams_class(key: str) -> type:
    """The dataclass of the algorithm settings kept under config.json's ``key`` (``ALGORITHM_HPARAMS``)."""
    module, name = ALGORITHM_HPARAMS[key].split(":")
    return getattr(importlib.import_module(module), name)


def _algorithm_settings(stored: dict) -> tuple[dict, list[str], set[str]]:
    """An algorithm's own settings, kept in config.json under one of ``ALGORITHM_HPARAMS``' keys: every
    field by name (fields the folder lacks at their defaults), ``name=value`` for those that differ
    from their defaults, and the field names read."""
    values: dict = {}
    changed: list[str] = []
    for key in ALGORITHM_HPARAMS:
        section = stored.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise TypeError(f"config.json's {key} is not a mapping")
        for f in fields(_hparams_class(key)):
            value = section.get(f.name, f.default)
            values[f.name] = value
            if _differs(value, f.default):
                changed.append(f"{f.name}={_format(value)}")
    return values, changed, set(values)


_ALL_DEFAULTS = re.compile(r"^[A-Za-z_]\w*\(\)$")  # ``cs()``: an algorithm's settings, all at their defaults


def _unshown_identity(identity: list[str], stored: dict, shown: set[str], said: list[str]) -> list[str]:
    """The identity items the settings do not already say: an algorithm's ``KEY(...)`` whose settings
    were read from config.json's ``KEY``, ``NAME=VALUE`` items of settings read (``shown``), items
    equal to one of ``said`` (a branch's ``seed=1``) and ``KEY()`` (every setting at its default)
    are left out."""
    out = []
    for item in identity:
        if item in said:
            continue
        head = item.split("(", 1)[0]
        read = head in ALGORITHM_HPARAMS and isinstance(stored.get(head), dict)
        if _ALL_DEFAULTS.match(item) or (item.endswith(")") and read):
            continue
        if "=" in item and "(" not in item.split("=", 1)[0] and item.split("=", 1)[0] in shown:
            continue
        out.append(item)
    return out


def read_row(folder: Path, parent: Optional[Path] = None) -> RunRow:
    """The row of run folder ``folder`` (a branch of ``parent`` if given); never raises for a
    damaged folder: its status is ``damaged`` and ``reason`` says why."""
    from training.engine.runs import planned_levels

    name = folder.name
    row = RunRow(folder=folder, parent=parent, command=name.rsplit("-", 1)[0] if RUN_FOLDER.match(name) else "?")
    row.pid = lock_holder(folder)
    if not (folder / "config.json").exists() and (row.command == "compress" or (folder / COMPRESS_REPORT).exists()):
        return _read_compress(row)
    try:
        stored = _read_json(folder / "config.json")
        if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
            raise ValueError("config.json holds no configuration")
        row.command = str(stored.get("algorithm") or row.command)
        row.values, changed = _values_and_settings(stored["config"])
        own, own_changed, own_names = _algorithm_settings(stored)
        row.values.update(own)  # cs's rewind, where the pruning section (None for cs) has one too
        identity = stored.get("identity") or []
        row.identity = [str(item) for item in identity] if isinstance(identity, list) else [str(identity)]
        said = changed + own_changed
        row.settings = " ".join(said + _unshown_identity(row.identity, stored, own_names, said))
        row.levels_planned = planned_levels(stored)
        history = stored.get("provenance")
        first = history[0] if isinstance(history, list) and history else history
        row.started = first.get("started") if isinstance(first, dict) else None
        summary_path = folder / "summary.json"
        levels: list = []
        run_diverged: Any = None  # summary.json may mark the run as a whole (a NaN loss: why, where)
        if summary_path.exists():
            summary = _read_json(summary_path)
            levels = summary.get("levels") if isinstance(summary, dict) else None
            if not isinstance(levels, list) or not all(isinstance(e, dict) for e in levels):
                raise ValueError("summary.json holds no list of levels")
            run_diverged = summary.get("diverged")
            row.levels_done = len(levels)
        else:  # an analysis branch (training.engine.branches.train_run) writes no summary.json
            row.levels_done = 0
            while (folder / f"level_{row.levels_done}" / "final.pt").exists():
                row.levels_done += 1
        row.levels = levels
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        row.status = "running" if row.pid is not None else "damaged"  # a starting run writes config.json next
        row.reason = str(exc) if isinstance(exc, (ValueError, TypeError)) else f"{exc.strerror or exc}"
        return row
    if row.levels_planned is not None:  # a later start that asked for fewer levels than were done
        row.levels_planned = max(row.levels_planned, row.levels_done)
    half_done = (folder / f"level_{row.levels_done}").exists()  # killed while training it
    if row.pid is not None:
        row.status = "running"
    elif run_diverged or any(entry.get("diverged") for entry in levels):
        row.status = "diverged"
        at = [str(e.get("level", i)) for i, e in enumerate(levels) if e.get("diverged")]
        row.reason = run_diverged if isinstance(run_diverged, str) else f"level {', '.join(at)}" if at else ""
    elif half_done or row.levels_done == 0 or (row.levels_planned is not None and row.levels_done < row.levels_planned):
        row.status = "stopped"
        if half_done:
            row.reason = f"level {row.levels_done} was started and not finished"
    else:
        row.status = "complete"
    return row


def _read_compress(row: RunRow) -> RunRow:
    """The row of a ``compress`` folder (``training.compression``): complete with its
    ``compression.json`` (the settings that differ from their defaults and the source; the
    Huffman-coded network's test accuracy and the fraction of weights kept), stopped without it
    (an interrupted compression starts over when asked again), running while its lock is held."""
    from training.compression.pipeline import CompressionSettings

    row.command = "compress"
    path = row.folder / COMPRESS_REPORT
    if row.pid is not None:
        row.status = "running"
        return row
    if not path.exists():
        row.status, row.reason = "stopped", f"no {COMPRESS_REPORT}: interrupted (asked again, it starts over)"
        return row
    try:
        report = _read_json(path)
        settings = report.get("settings")
        if not isinstance(settings, dict):
            raise ValueError(f"{COMPRESS_REPORT} holds no settings")
        changed = []
        for f in fields(CompressionSettings):
            row.values[f.name] = settings.get(f.name, f.default)
            if _differs(row.values[f.name], f.default):
                changed.append(f"{f.name}={_format(row.values[f.name])}")
        row.values["source"] = report.get("source")
        row.settings = " ".join(changed + [f"source={_format(report.get('source'))}"])
        huffman = [s for s in report.get("stages", []) if isinstance(s, dict) and s.get("stage") == "huffman"]
        total = [r for r in report.get("layers", []) if isinstance(r, dict) and r.get("layer") == "total"]
        row.result = {"test_accuracy": huffman[0].get("test_accuracy") if huffman else None,
                      "density": total[0].get("fraction_kept") if total else None}
    except (ValueError, TypeError, AttributeError) as exc:
        row.status, row.reason = "damaged", str(exc)
        return row
    row.status = "complete"
    return row


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; ``ValueError`` naming the file when it is missing or not JSON."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"no {path.name}") from None
    except OSError as exc:
        raise ValueError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path.name} is not valid JSON ({exc.msg}, line {exc.lineno})") from None


# ---------------------------------------------------------------------------------------------
# Finding the folders


def _is_run_folder(path: Path) -> bool:
    return RUN_FOLDER.match(path.name) is not None or (path / "config.json").exists()


def _subfolders(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def find_runs(root: Path) -> list[RunRow]:
    """Every run folder under ``root`` (``root`` itself if it is one), each followed by its
    branches (``RUN/branches/NAME-HASH``); rows in folder order."""
    rows: list[RunRow] = []
    indexes = _Indexes()

    def add_run(folder: Path, parent: Optional[Path] = None) -> None:
        row = read_row(folder, parent)
        row.indexes = indexes.naming(folder)
        rows.append(row)
        branches = folder / "branches"
        if branches.is_dir():
            indexes.read(branches)
            for branch in _subfolders(branches):
                if _is_run_folder(branch):
                    add_run(branch, folder)

    def walk(path: Path, depth: int) -> None:
        indexes.read(path)
        for sub in _subfolders(path):
            if _is_run_folder(sub):
                add_run(sub)
            elif depth < MAX_DEPTH:
                walk(sub, depth + 1)

    if (root / "config.json").exists():
        indexes.read(root.parent)
        add_run(root)
    else:
        walk(root, 1)
    return rows


class _Indexes:
    """The sweep (``sweep-HASH.csv``) and ticket-search (``ticket-search-HASH.json``) index files
    that list a run folder; an index names the runs of its own folder."""

    def __init__(self) -> None:
        self._by_folder: dict[str, list[str]] = {}

    def read(self, folder: Path) -> None:
        try:
            files = sorted(folder.glob("sweep-*.csv")) + sorted(folder.glob("ticket-search-*.json"))
        except OSError:
            return
        for path in files:
            for listed in self._listed(path):
                key = str(folder / Path(listed).name)
                self._by_folder.setdefault(key, []).append(path.stem)

    @staticmethod
    def _listed(path: Path) -> list[str]:
        try:
            if path.suffix == ".csv":
                return [r["folder"] for r in csv.DictReader(io.StringIO(path.read_text())) if r.get("folder")]
            data = json.loads(path.read_text())
            return [str(r["run"]) for r in data.get("replicates", []) if isinstance(r, dict) and r.get("run")]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, csv.Error):
            return []  # an unreadable index says nothing; the runs are listed all the same

    def naming(self, folder: Path) -> list[str]:
        return self._by_folder.get(str(folder), [])


# ---------------------------------------------------------------------------------------------
# Filters


def parse_where(items: Sequence[str]) -> dict[str, list[str]]:
    """``--where FIELD=VALUE`` items as {field: [values]} (a field given twice matches either
    value); ``UserError`` for an item without ``=``."""
    wanted: dict[str, list[str]] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_").split(".")[-1]  # lr, train-for, training.lr
        if not eq or not name:
            raise UserError(f"--where takes FIELD=VALUE (e.g. --where model=mnist1d_mlp), got {item!r}")
        wanted.setdefault(name, []).append(value.strip())
    return wanted


def known_fields() -> set[str]:
    """The field names ``--where`` knows whatever the runs: the row's columns and every hyperparameter."""
    names = set(RUN_COLUMNS) | {"algorithm", "index", "source"}
    for kind in [*SECTIONS.values(), ExecutionHparams, *map(_hparams_class, ALGORITHM_HPARAMS)]:
        names |= {f.name for f in fields(kind)}
    return names


def setting_names() -> list[str]:
    """Every hyperparameter, execution setting and algorithm setting, once each, in the order of
    the CSV/JSON columns."""
    names: dict[str, None] = {}
    for kind in [*SECTIONS.values(), ExecutionHparams, *map(_hparams_class, ALGORITHM_HPARAMS)]:
        names.update((f.name, None) for f in fields(kind))
    return list(names)


def _matches(actual: Any, wanted: str) -> bool:
    if isinstance(actual, list):
        return any(_matches(a, wanted) for a in actual)
    if actual is None:
        return wanted.lower() in ("none", "")
    if isinstance(actual, bool):
        return wanted.lower() in (("true", "1", "yes", "on") if actual else ("false", "0", "no", "off"))
    if str(actual) == wanted:
        return True
    try:
        return math.isclose(float(actual), float(wanted), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return False


def select(rows: Sequence[RunRow], wanted: dict[str, list[str]]) -> list[RunRow]:
    """The rows whose every ``wanted`` field has one of its values; ``UserError`` naming a field
    that no run knows."""
    known = known_fields() | {k for r in rows for k in r.lookup()}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise UserError(f"--where {unknown[0]}: no such field; use a hyperparameter name (model, lr, seed, ...), "
                        "an execution setting (threads, precision, ...) or one of folder, command, status, "
                        "levels_done, levels_planned")
    out = []
    for row in rows:
        values = row.lookup()
        if all(any(_matches(values.get(name), v) for v in options) for name, options in wanted.items()):
            out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Output


def _density_keys(rows: Sequence[RunRow]) -> list[str]:
    """Every density a summary reports (``density`` first, then any other ``*density*`` field)."""
    keys = {k for r in rows for e in [*r.levels, r.result] for k in e if "density" in k}
    return sorted(keys, key=lambda k: (k != "density", k))


def _scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def records(rows: Sequence[RunRow], per_level: bool = False) -> tuple[list[str], list[dict]]:
    """Column names and one flat record per run (``per_level``: per finished level; a run without
    one keeps a single record with empty level fields), for CSV and JSON. Accuracies and densities
    are fractions; ``folder`` is a path as given with ROOT, ready for ``analysis``."""
    densities = _density_keys(rows)
    level_keys: list[str] = []
    if per_level:
        seen = {k for r in rows for e in r.levels for k, v in e.items() if k != "checkpoints"}
        level_keys = ["level", *densities, *sorted(seen - {"level", *densities})]
    hparams = setting_names()
    columns = [*RUN_COLUMNS, *(level_keys if per_level else ["test_accuracy", *densities]), *TAIL_COLUMNS, *hparams]
    out = []
    for row in rows:
        base = {"folder": str(row.folder), "parent": None if row.parent is None else str(row.parent),
                "command": row.command, "status": row.status, "pid": row.pid, "reason": row.reason or None,
                "levels_done": row.levels_done, "levels_planned": row.levels_planned,
                "settings": row.settings, "identity": ";".join(row.identity), "indexes": ";".join(row.indexes),
                "started": row.started, **{name: row.values.get(name) for name in hparams}}
        if per_level:
            for entry in row.levels or [row.result]:
                out.append({**base, **{k: _scalar(entry.get(k)) for k in level_keys}})
        else:
            last = row.last()
            out.append({**base, **{k: _scalar(last.get(k)) for k in ["test_accuracy", *densities]}})
    return columns, [{c: _scalar(r.get(c)) for c in columns} for r in out]


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _status_text(row: RunRow) -> str:
    if row.status == "running" and row.pid:
        return f"running (PID {row.pid})"
    if row.status in ("damaged", "diverged") and row.reason:
        text = f"{row.status}: {row.reason.split('; ')[0]}"  # a NaN's reason goes on with where to resume
        return text if len(text) <= 60 else text[:56].rsplit(" ", 1)[0] + " ..."  # CSV/JSON: in full
    return row.status


def table(rows: Sequence[RunRow], root: Path, per_level: bool = False) -> str:
    """The human-readable listing: one line per run (branches indented under their parent), and
    with ``per_level`` one indented line per level. Accuracies and densities in percent."""
    densities = _density_keys(rows)
    head = ["folder", "command", "levels", "status", "test acc", *densities, "settings"]
    lines = []
    for row in rows:
        try:
            shown = str(row.folder.relative_to(root))
        except ValueError:
            shown = str(row.folder)
        if shown == ".":
            shown = str(row.folder)
        if row.parent is not None:
            shown = "  " + shown
        done = "?" if row.levels_done is None else str(row.levels_done)
        planned = "?" if row.levels_planned is None else str(row.levels_planned)
        levels = "-" if row.command == "compress" else f"{done}/{planned}"  # a compression has no levels
        last = row.last()
        lines.append([shown, row.command + (" (branch)" if row.parent is not None else ""), levels,
                      _status_text(row), _percent(last.get("test_accuracy")),
                      *[_percent(last.get(k)) for k in densities], row.settings or "(defaults)"])
    widths = [max(len(str(line[i])) for line in [head, *lines]) for i in range(len(head) - 1)]

    def render(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + "  " + str(cells[-1])

    out = [render(head).rstrip()]
    for row, cells in zip(rows, lines):
        out.append(render(cells).rstrip())
        if per_level:
            indent = "    " + ("  " if row.parent is not None else "")
            for entry in row.levels:
                parts = [f"level {entry.get('level', '?')}", f"test acc {_percent(entry.get('test_accuracy'))}"]
                parts += [f"{k} {_percent(entry.get(k))}" for k in densities]
                if entry.get("diverged"):
                    parts.append("diverged")
                out.append(indent + "  ".join(parts))
    return "\n".join(out)


def list_runs(root: str | Path = "runs", where: Sequence[str] = (), per_level: bool = False,
              fmt: str = "table") -> int:
    """Print the runs under ``root`` (``fmt``: ``table``, ``csv`` or ``json``) to stdout; return the
    exit status (0). ``UserError`` for a missing ROOT or a bad ``--where``, before anything is printed.
    An empty listing is one line on stderr (with an empty table on stdout for CSV/JSON)."""
    wanted = parse_where(where)
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"{root} does not exist; give the folder that holds run folders (the runs' --out)")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder; give the folder that holds run folders (the runs' --out)")
    found = find_runs(root)
    rows = select(found, wanted)
    if fmt in ("csv", "json"):
        columns, recs = records(rows, per_level)
        if fmt == "json":
            sys.stdout.write(json.dumps(recs, indent=1, allow_nan=False) + "\n")
        else:
            writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in recs)
    elif rows:
        print(table(rows, root, per_level))
    if not found:
        print(f"no runs under {root}", file=sys.stderr if fmt != "table" else sys.stdout)
    elif not rows:
        text = " ".join(f"{k}={'|'.join(v)}" for k, v in wanted.items())
        print(f"no runs under {root} match --where {text} ({len(found)} run{'' if len(found) == 1 else 's'} in all)",
              file=sys.stderr if fmt != "table" else sys.stdout)
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", nargs="?", default="runs", metavar="ROOT",
                        help="folder that holds run folders, searched a few levels deep (default: runs), or one run folder")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="keep runs whose FIELD is VALUE: a hyperparameter (model, lr, seed, ...), an execution "
                             "setting (device, threads, precision, channels_last, compile, deterministic, world_size), "
                             "an algorithm's own setting (cs/iss: mask_init, freeze_weights, ...; edge-popup: keep, "
                             "...) or command, status, levels_done, levels_planned, folder; repeat for more fields "
                             "(all must match; the same field twice matches either value)")
    parser.add_argument("--levels", action="store_true",
                        help="every level's test accuracy and densities (CSV/JSON: one row per level)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV on stdout (pandas.read_csv), one row per run")
    out.add_argument("--json", action="store_true", help="JSON records on stdout (pandas.read_json), one per run")


def _prepare(args: argparse.Namespace):
    parse_where(args.where)  # a bad filter is refused before anything is read
    fmt = "csv" if args.csv else "json" if args.json else "table"
    return lambda: list_runs(args.root, args.where, args.levels, fmt)


RUNS = Command(
    "runs", "list the run folders under a root: settings, levels, status, accuracy",
    "List the run folders under ROOT (default runs/), one row each, with branches (controls, instability copies) "
    "under their parent and compress folders in rows of their own: the command, the settings that differ from "
    "their defaults (hyperparameters, execution settings in the run's identity such as --threads or --precision, "
    "an algorithm's own such as cs's --mask-init), levels done of the levels asked for, the status (complete; "
    "running, with the PID of the process holding it; stopped; diverged, at chance or by a NaN loss; damaged, "
    "with the reason) and the last level's test accuracy and density. Reads only config.json, summary.json and "
    "compression.json.",
    """\
examples:
  python -m training runs                                   # everything under runs/
  python -m training runs --where model=mnist1d_mlp --where status=complete
  python -m training runs --where command=imp --levels      # every level's accuracy and density
  python -m training runs --csv > runs.csv                  # pandas.read_csv("runs.csv"); --json: pandas.read_json

Accuracies and densities are in percent in the table and fractions in CSV/JSON. Levels show
done/asked-for: the levels the latest start asked for, at least those done ("?": the start did not
record how many levels it asked for; "-": a compress folder, which has none).
""",
    _flags, _prepare, resumable=False, sweepable=False)
