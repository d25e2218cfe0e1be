"""Watching runs: TensorBoard, Weights & Biases and MLflow mirrors of a run's ``metrics.jsonl``.

``metrics.jsonl`` stays the source of truth; ``--log tensorboard,wandb,mlflow`` (any of them, comma
separated) also sends every record to those tools, under the same metric names:

* per evaluation, every number of the ``metrics.jsonl`` record (``test_accuracy``, ``train_loss``,
  ``lr``, ``level``, ``iteration``, ``epoch``, ...) at the run's **step**: the iterations trained so
  far in the run, all levels together, each new level's first evaluation one step after the
  previous level's last (level 0 of a 3-epoch run ends at step T; level 1, rewound to k, starts at
  T + 1). Plot against ``iteration`` or ``level`` where the tool lets you choose the x axis;
* per finished level, the numbers of its ``summary.json`` entry as ``summary/NAME``
  (``summary/test_accuracy``, ``summary/density``, ...), at step = the level (TensorBoard, MLflow) or
  with ``summary/level`` as their x axis (W&B, whose steps must only grow);
* once, the run's configuration as hyperparameters (``training.lr``, ``pruning.fraction``, ...).

Where each writes: TensorBoard event files in the run folder itself (``tensorboard --logdir runs``
shows one run per folder); W&B, always offline (no network at run time), in ``RUN/wandb/``, the
run named after the run folder (``wandb sync RUN/wandb/offline-run-*`` uploads it later); MLflow
in a file store ``OUT/mlruns`` (``--mlflow-uri`` for a server), the run named after the folder.

A resumed run continues the same logged run: ``RUN/loggers.json`` keeps each backend's run id
(W&B, MLflow) and the last step and level it was sent, and records at or below them are not sent
again (same step numbers, no duplicated points). A backend added when a run is run again catches up
from ``metrics.jsonl`` and ``summary.json``: ``--log`` on a finished run logs it.

The ``--log`` flags are not results, so they are not part of the run's identity (its folder
name). A run command logs as its flags say for as long as it runs; from Python,
``with logging_to(LogSettings(("tensorboard",))): ...`` does the same.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol, Sequence

from training.errors import UserError

if TYPE_CHECKING:
    from training.engine.runs import Run

PACKAGE = "lth-toolkit"  # pyproject's [project] name: the extras are installed as lth-toolkit[EXTRA]
# backend: (module that must be importable, pyproject extra that installs it)
BACKENDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
STATE_NAME = "loggers.json"
DEFAULT_PROJECT = "lth-toolkit"


@dataclass(frozen=True)
class LogSettings:
    """Which backends a run mirrors its metrics to, and where.

    ``backends``: names from ``BACKENDS``; ``project``: the W&B project and MLflow experiment;
    ``group``: the W&B group and MLflow tag ``group`` (a sweep's index name); ``mlflow_uri``: the
    MLflow tracking URI (None: a file store in the run's ``--out``, ``OUT/mlruns``)."""

    backends: tuple[str, ...] = ()
    project: str = DEFAULT_PROJECT
    group: Optional[str] = None
    mlflow_uri: Optional[str] = None


def parse_backends(text: str) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ``("tensorboard", "wandb")``; ``UserError`` (one line) for an
    unknown name or a backend whose package is not installed (naming the pip command)."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in BACKENDS:
            raise UserError(f"--log takes {', '.join(BACKENDS)} (comma-separated), got {name!r}")
    names = list(dict.fromkeys(names))
    check_installed(names)
    return tuple(names)


def check_installed(backends: Sequence[str]) -> None:
    """``UserError`` naming the pip command for the first backend whose package is missing."""
    for name in backends:
        module, extra = BACKENDS[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UserError(f"--log {name} needs the {module} package: pip install \"{PACKAGE}[{extra}]\"")


# What the runs started now log to: set for the length of a command by ``logging_to`` (which
# ``training.commands.prepare_run`` wraps around every run command).
_requested = LogSettings()


def requested() -> LogSettings:
    """The logging asked for by the run command that is running now (or ``logging_to``)."""
    return _requested


@contextlib.contextmanager
def logging_to(settings: LogSettings) -> Iterator[LogSettings]:
    """Runs started inside the block log as ``settings`` says (the Python counterpart of ``--log``)."""
    global _requested
    check_installed(settings.backends)
    if "mlflow" in settings.backends and settings.mlflow_uri:
        check_reachable(settings.mlflow_uri)
    before, _requested = _requested, settings
    try:
        yield settings
    finally:
        _requested = before


def _backends_flag(text: str) -> tuple[str, ...]:
    try:
        return parse_backends(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--log ")) from None


_backends_flag.__name__ = "backends"  # argparse names the converter in its messages


def add_log_flags(group: argparse._ActionsContainer) -> None:
    """``--log``, ``--log-project``, ``--log-group`` and ``--mlflow-uri`` (not part of a run's identity);
    ``settings_from_args`` reads them back."""
    group.add_argument("--log", default=(), metavar="BACKENDS", type=_backends_flag,
                       help="also send the metrics to tensorboard, wandb (offline) and/or mlflow, comma-separated "
                            "(metrics.jsonl is always written; a resumed run continues the same logged run)")
    group.add_argument("--log-project", default=DEFAULT_PROJECT, metavar="NAME",
                       help=f"W&B project and MLflow experiment (default {DEFAULT_PROJECT})")
    group.add_argument("--log-group", default="", metavar="NAME",
                       help="W&B group and MLflow tag 'group' (a sweep sets it to its index's name)")
    group.add_argument("--mlflow-uri", default="", metavar="URI",
                       help="MLflow tracking URI, e.g. http://host:5000 (default: a file store in OUT/mlruns)")


def settings_from_args(args: argparse.Namespace) -> LogSettings:
    """The ``LogSettings`` of a command line parsed with ``add_log_flags`` (a warning on stderr for
    a logging flag given without ``--log``: it would do nothing)."""
    settings = LogSettings(tuple(args.log), args.log_project or DEFAULT_PROJECT, args.log_group or None,
                           args.mlflow_uri or None)
    unused = [flag for flag, value in (("--log-project", settings.project != DEFAULT_PROJECT),
                                       ("--log-group", settings.group), ("--mlflow-uri", settings.mlflow_uri))
              if value and not settings.backends]
    if unused:
        print(f"warning: {', '.join(unused)} has no effect without --log", file=sys.stderr)
    return settings


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """``UserError`` (one line) when the MLflow server at an http(s) ``uri`` does not accept a
    connection within ``timeout`` seconds (MLflow's own retries would take minutes)."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"--mlflow-uri {uri}: no MLflow server answers there ({exc.strerror or exc}); start it, or "
                        f"leave --mlflow-uri out to log to a file store in --out") from None


def with_group(argv: Sequence[str], group: str) -> list[str]:
    """``argv`` with ``--log-group GROUP`` added when it asks for ``--log`` and names no group (a
    sweep's runs)."""
    given = lambda flag: any(a == flag or a.startswith(flag + "=") for a in argv)  # noqa: E731
    if not given("--log") or given("--log-group"):
        return list(argv)
    return [*argv, "--log-group", group]


# --- the backends ------------------------------------------------------------------------------

class Logger(Protocol):
    """One backend. Values are finite numbers; names are those of ``metrics.jsonl`` (per
    evaluation) or ``summary/NAME`` (per level)."""

    def log_params(self, params: dict[str, Any]) -> None:
        """The run's configuration, flattened (``training.lr``: 0.1), once per logged run."""

    def log_metrics(self, record: dict[str, float], step: int) -> None:
        """One evaluation's numbers at the run's ``step``."""

    def log_level(self, record: dict[str, float], level: int, step: int) -> None:
        """A finished level's numbers (``summary/NAME``); ``step``: the step of its last evaluation."""

    def close(self) -> None:
        """Write out what is buffered and end the logged run (it can be resumed later)."""


class TensorBoardLogger:
    """Event files in the run folder (``torch.utils.tensorboard``)."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), flush_secs=30)

    def log_params(self, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        for summary in hparams(values, {"test_accuracy": 0.0, "summary/test_accuracy": 0.0}):
            self.writer.file_writer.add_summary(summary)
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + table, 0)

    def log_metrics(self, record: dict[str, float], step: int) -> None:
        for name, value in record.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_level(self, record: dict[str, float], level: int, step: int) -> None:
        for name, value in record.items():
            self.writer.add_scalar(name, value, level)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


_live_wandb: dict[str, Any] = {}  # run id -> the W&B run this process has open


class WandbLogger:
    """An offline W&B run in ``RUN/wandb/``, named after the run folder, resumed by its stored id."""

    def __init__(self, run_dir: Path, run_id: str, settings: LogSettings, params: dict[str, Any]):
        os.environ["WANDB_MODE"] = "offline"  # never the network: `wandb sync` uploads later
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        if run_id in _live_wandb:  # the same run started again in this process (a notebook, a test)
            with contextlib.suppress(Exception):
                _live_wandb.pop(run_id).finish()
        self.run = _live_wandb[run_id] = wandb.init(project=settings.project, dir=str(run_dir), id=run_id, name=run_dir.name,
                              group=settings.group, resume="allow", mode="offline", config=params,
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("summary/level")
        self.run.define_metric("summary/*", step_metric="summary/level")

    def log_params(self, params: dict[str, Any]) -> None:
        pass  # given to wandb.init as its config

    def log_metrics(self, record: dict[str, float], step: int) -> None:
        self.run.log(record, step=step)

    def log_level(self, record: dict[str, float], level: int, step: int) -> None:
        self.run.log(record, step=step)  # joins the row of the level's last evaluation

    def close(self) -> None:
        if _live_wandb.get(self.run.id) is self.run:
            del _live_wandb[self.run.id]
        self.run.finish()


class MlflowLogger:
    """An MLflow run (client API: no global active run) in the experiment ``settings.project``."""

    def __init__(self, uri: str, run_id: Optional[str], run_dir: Path, algorithm: str, settings: LogSettings):
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store only on request; a local store is what --log mlflow promises
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name(settings.project)
            if experiment is None:
                try:
                    experiment_id = self.client.create_experiment(settings.project)
                except Exception:  # another run of a sweep made it first
                    experiment_id = self.client.get_experiment_by_name(settings.project).experiment_id
            else:
                experiment_id = experiment.experiment_id
            tags = {"algorithm": algorithm, "run_folder": str(run_dir), **({"group": settings.group} if settings.group else {})}
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _log(self, record: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in record.items()])

    def log_metrics(self, record: dict[str, float], step: int) -> None:
        self._log(record, step)

    def log_level(self, record: dict[str, float], level: int, step: int) -> None:
        self._log(record, level)

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


# --- the mirror of metrics.jsonl ---------------------------------------------------------------

def numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``record`` (booleans, strings, None and NaN left out), names prefixed."""
    return {prefix + k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"training": {"lr": 0.1}}`` -> ``{"training.lr": 0.1}`` (None sections left out)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif value is not None:
            flat[prefix + key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


class Steps:
    """The run's step of each ``metrics.jsonl`` record, a function of the records before it: the
    iterations trained so far, all levels together, plus one at each new level."""

    def __init__(self) -> None:
        self.level: Optional[int] = None
        self.iteration = 0
        self.step = -1
        self.last_of: dict[int, int] = {}  # level -> step of its last evaluation so far

    def next(self, record: dict) -> int:
        level, iteration = int(record.get("level", 0)), int(record.get("iteration", 0))
        if self.level is None:
            self.step = iteration
        elif level == self.level:
            self.step += max(1, iteration - self.iteration)
        else:
            self.step += 1
        self.level, self.iteration = level, iteration
        self.last_of[level] = self.step
        return self.step


class Mirror:
    """Sends ``metrics.jsonl`` records and ``summary.json`` levels to the backends, each at most once
    per step and level (``RUN/loggers.json`` remembers what each was sent)."""

    def __init__(self, run_dir: Path, backends: dict[str, Logger], state: dict):
        self.dir, self.backends, self.state = Path(run_dir), backends, state
        self.steps = Steps()

    def _save(self) -> None:
        from training.engine.checkpoint import atomic_write_text

        atomic_write_text(self.dir / STATE_NAME, json.dumps(self.state, indent=1) + "\n")

    def _each(self, what: str, call) -> None:
        for name in list(self.backends):
            try:
                call(name, self.backends[name], self.state[name])
            except Exception as exc:  # a logging tool failing must not end the training it watches
                first = str(exc).splitlines()[0] if str(exc) else ""
                print(f"warning: --log {name} stopped ({what}: {type(exc).__name__} {first}); metrics.jsonl keeps "
                      "every record and running the command again catches it up", file=sys.stderr)
                backend = self.backends.pop(name)
                with contextlib.suppress(Exception):
                    backend.close()
        self._save()

    def restart(self, records: Sequence[dict]) -> None:
        """The log was cut back to ``records`` (a resume): the next record follows the last of them."""
        self.steps = Steps()
        for record in records:
            self.steps.next(record)

    def write(self, record: dict) -> None:
        """One new ``metrics.jsonl`` record."""
        step = self.steps.next(record)
        values = numbers(record)

        def send(name: str, backend: Logger, state: dict) -> None:
            if step > state["step"]:
                backend.log_metrics(values, step)
                state["step"] = step

        self._each("metrics", send)

    def levels(self, entries: Sequence[dict], upto: Optional[int] = None) -> None:
        """The finished levels (``summary.json``'s entries); those a backend has are skipped."""
        for entry in entries:
            level = int(entry["level"])
            if upto is not None and level > upto:
                continue
            values = numbers(entry, "summary/")
            step = self.steps.last_of.get(level, max(self.steps.step, 0))

            def send(name: str, backend: Logger, state: dict) -> None:
                if level > state["level"]:
                    backend.log_level(values, level, step)
                    state["level"] = level

            self._each("levels", send)

    def catch_up(self, records: Sequence[dict], entries: Sequence[dict]) -> None:
        """Send what ``metrics.jsonl`` and ``summary.json`` hold and a backend has not had, in order
        (each level's numbers right after its last evaluation)."""
        self.steps = Steps()
        for record in records:
            if self.steps.level is not None and record.get("level", 0) != self.steps.level:
                self.levels(entries, upto=self.steps.level)
            self.write(record)
        self.levels(entries)

    def close(self) -> None:
        """End every backend's logged run (a later start of the same run resumes it)."""
        backends, self.backends = self.backends, {}
        for backend in backends.values():
            with contextlib.suppress(Exception):
                backend.close()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def start(run: "Run", settings: Optional[LogSettings] = None) -> Optional[Mirror]:
    """Open the backends ``settings`` (default: what the command line asked) names for ``run``,
    resuming their logged runs, and catch them up; None when no backend is asked for. Called once
    the run holds its folder's lock."""
    settings = requested() if settings is None else settings
    if not settings.backends:
        return None
    check_installed(settings.backends)
    saved = _read_json(run.dir / STATE_NAME)
    config = {"algorithm": run.algorithm, "run": run.dir.name, "identity": list(run.extra_identity),
              **run.config.to_dict()}
    params = flatten(config)
    mlflow_uri = settings.mlflow_uri or (Path(run.root).resolve() / "mlruns").as_uri()
    # TensorBoard's event files live in the run folder itself: the same place however --out is spelt,
    # and after the folder moves (a path here would make a resume send everything again)
    where = {"tensorboard": "run folder", "wandb": settings.project, "mlflow": f"{mlflow_uri} {settings.project}"}
    state, backends = dict(saved), {}
    try:
        for name in settings.backends:
            old = saved.get(name)
            fresh = not (isinstance(old, dict) and old.get("where") == where[name])
            mine = {"where": where[name], "step": -1, "level": -1} if fresh else dict(old)
            if name == "tensorboard":
                backends[name] = TensorBoardLogger(run.dir)
            elif name == "wandb":
                mine.setdefault("id", secrets.token_hex(4))
                backends[name] = WandbLogger(run.dir, mine["id"], settings, config)
            else:
                backends[name] = MlflowLogger(mlflow_uri, mine.get("id"), run.dir, run.algorithm, settings)
                mine["id"] = backends[name].run_id
            if fresh:
                backends[name].log_params(params)
            state[name] = mine
    except UserError:
        raise
    except Exception as exc:
        for backend in backends.values():
            with contextlib.suppress(Exception):
                backend.close()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--log {name} could not start: {first}") from None
    mirror = Mirror(run.dir, backends, state)
    from training.engine.metrics_log import MetricsLog

    entries = _read_json(run.dir / "summary.json").get("levels", [])
    mirror.catch_up(MetricsLog(run.dir / "metrics.jsonl").read(), entries if isinstance(entries, list) else [])
    return mirror
