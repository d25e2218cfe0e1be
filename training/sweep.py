"""Sweeps: one run command over a grid of flag values, run after run.

A sweep is the list of command lines ``COMMAND BASE... --FIELD VALUE ...``, one per point of the
grid (the Cartesian product of the ``--grid FIELD=V1,V2`` lists, in the order given). Each is
parsed and checked exactly as the command line would check it, all of them before the first run
starts, and each run keeps its own hash-named, resumable folder: a sweep that dies is resumed by
running it again (finished runs are skipped, an unfinished one resumes). A run that fails is
reported with its error and the others go on. ``OUT/sweep-HASH.csv`` indexes the runs (grid
values, status, folder, the metrics of the last level each point asked for), rewritten after every
run, for pandas.

Backends (the executor adds no logic of its own: every run is the same function of its command
line): ``local`` (this process, one run after another, needs nothing), ``ray`` (each run a Ray task;
joins a cluster with ``--ray-address``, else starts a local Ray on this machine's CPUs/GPUs) and
``slurm`` (each run a Slurm job through submitit; where no Slurm is found, submitit's local
executor runs the jobs as processes of this machine).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from training.engine.checkpoint import atomic_write_text
from training.cli import ArgumentParser
from training.engine.loggers import with_group
from training.errors import UserError

BACKENDS = ("local", "ray", "slurm")
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # backend: (module, pyproject extra)
ENVIRONMENT = ("LTH_DATA_DIR",)  # what a worker needs from this process's environment


def runnable() -> tuple[str, ...]:
    """The commands a sweep can run: the registered ones marked ``sweepable``, in registry order."""
    from training.commands import registry

    return tuple(c.name for c in registry() if c.sweepable)


class _RaisingParser(ArgumentParser):
    """The command's own parser, raising ``UserError`` so that a sweep names the bad point."""

    def error(self, message: str):
        raise UserError(message)


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lr=0.01,0.1", "seed=0,1"]`` -> ``{"lr": ["0.01", "0.1"], "seed": ["0", "1"]}``; values
    stay strings, parsed later by the command's own flags. ``UserError`` for a malformed item."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().lstrip("-").replace("_", "-")
        listed = [v.strip() for v in values.split(",")]
        if not sep or not name or not all(listed):
            raise UserError(f"--grid takes FIELD=V1,V2,... (e.g. --grid lr=0.01,0.1), got {item!r}")
        if name in grid:
            raise UserError(f"--grid names {name} twice; give all its values in one --grid {name}=...")
        grid[name] = listed
    return grid


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first field varying slowest."""
    names = list(grid)
    return [dict(zip(names, map(str, values))) for values in itertools.product(*(grid[n] for n in names))]


def point_argv(command: str, base: Sequence[str], point: Mapping[str, str]) -> list[str]:
    """The command line of one grid point: the command, the base flags, then ``--FIELD VALUE``
    for every field of the point (a later flag overrides an earlier one)."""
    return [command, *base, *itertools.chain.from_iterable((f"--{k}", v) for k, v in point.items())]


@dataclass
class SweepRun:
    """One grid point: its values, its command line, and once run its status, folder and metrics."""

    point: dict[str, str]
    argv: list[str]
    status: str = "pending"
    folder: str = ""
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def _results(result: Any) -> tuple[str, dict]:
    """Folder and final metrics of what a run function returned: a ``Run`` (the last level its
    command asked for, ``at_level``: a folder shared with another command, such as the demo's with
    more levels, may hold more, counted in ``levels_in_folder``) or a ticket search's index (its
    path, and the mean over replicates of the last stage). Accuracies and densities are fractions."""
    if isinstance(result, dict):  # ticket search
        last = [rep["stages"][-1] for rep in result["replicates"] if rep["stages"]]
        mean = lambda key: sum(s[key] for s in last) / len(last) if last and all(key in s for s in last) else None  # noqa: E731
        return result.get("path", ""), {"levels": result["stages"], "density": mean("density"),
                                        "test_accuracy": mean("test_accuracy")}
    entries = result.summary()
    asked = getattr(result, "levels", None)  # None: the command did not say; its last level then
    reported = entries[:asked] if asked else entries
    last = reported[-1] if reported else {}
    return str(result.dir), {"levels": len(reported), "at_level": last.get("level"), "levels_in_folder": len(entries),
                             "density": last.get("density"), "test_accuracy": last.get("test_accuracy"),
                             "val_accuracy": last.get("val_accuracy")}


def execute(argv: Sequence[str], cwd: Optional[str] = None, env: Optional[dict] = None) -> tuple[str, str, dict, str]:
    """Run one command line ``[COMMAND, flags...]`` in this process (a Ray task or a Slurm job calls
    this too), from folder ``cwd`` with ``env`` set; return (status, folder, metrics, error), status
    ``done`` or ``failed`` (bad input or a failed run: the error's one line)."""
    from training.__main__ import make_parser, prepare

    if cwd is not None and os.path.isdir(cwd):  # relative --out/--data-dir mean the sweep's folder
        os.chdir(cwd)
    os.environ.update(env or {})
    try:
        args = make_parser(_RaisingParser).parse_args(list(argv))
        folder, metrics = _results(prepare(argv[0], args)())
        return "done", folder, metrics, ""
    except UserError as exc:
        return "failed", "", {}, str(exc)
    except Exception as exc:  # a crash of one run (a bug, a damaged file) must not end the sweep
        first = str(exc).splitlines()[0] if str(exc) else ""
        return "failed", "", {}, f"{type(exc).__name__}: {first}".rstrip(": ")


def plan(command: str, grid: Mapping[str, Sequence[Any]], base: Sequence[str] = ()) -> list[SweepRun]:
    """Parse and check every point's command line (nothing runs); ``UserError`` naming the first
    bad point otherwise."""
    from training.__main__ import make_parser, prepare

    if command not in runnable():
        raise UserError(f"a sweep runs one of {', '.join(runnable())}; got {command!r}")
    if not grid:
        raise UserError("give at least one --grid FIELD=V1,V2,... to sweep over")
    parser = make_parser(_RaisingParser)
    runs = []
    for point in points(grid):
        argv = point_argv(command, base, point)
        try:
            prepare(command, parser.parse_args(argv))  # checks only: nothing runs yet
        except UserError as exc:
            raise UserError(f"grid point {', '.join(f'{k}={v}' for k, v in point.items())}: {exc}") from None
        runs.append(SweepRun(point, argv))
    return runs


def index_path(command: str, grid: Mapping[str, Sequence[Any]], base: Sequence[str]) -> Path:
    """``OUT/sweep-HASH.csv``: OUT is the runs' ``--out`` (for controls, ``RUN/branches``); HASH
    covers the command, the base flags and the grid."""
    from training.__main__ import make_parser

    key = json.dumps([command, list(base), {k: list(map(str, v)) for k, v in grid.items()}])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    args = make_parser(_RaisingParser).parse_args(point_argv(command, base, points(grid)[0]))
    folder = Path(args.run) / "branches" if command == "control" else Path(args.out)
    return folder / f"sweep-{digest}.csv"


def write_index(runs: Sequence[SweepRun], path: Path) -> None:
    """One row per run: its grid values, status, folder, error and final metrics."""
    fields = list(runs[0].point) if runs else []
    metric_names = sorted({k for r in runs for k in r.metrics})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [*fields, "status", "folder", *metric_names, "error"])
    writer.writeheader()
    for r in runs:
        writer.writerow({**r.point, "status": r.status, "folder": r.folder, **r.metrics, "error": r.error})
    atomic_write_text(path, buffer.getvalue())


def check_backend(backend: str) -> None:
    """``UserError`` naming the pip command when ``backend`` needs an optional extra that is missing."""
    if backend in EXTRAS:
        module, extra = EXTRAS[backend]
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--backend {backend} needs {module}: pip install 'lth-toolkit[{extra}]'") from None


def run_grid(command: str, grid: Mapping[str, Sequence[Any]], base: Sequence[str] = (), *,
             backend: str = "local", progress: bool = True, ray_address: Optional[str] = None,
             cpus_per_run: float = 1, gpus_per_run: float = 0, slurm_partition: Optional[str] = None,
             timeout_min: int = 240) -> tuple[list[SweepRun], Path]:
    """Run ``command`` at every point of ``grid`` (``{flag name: values}``), with the flags in
    ``base`` common to all; return the runs (status ``done`` or ``failed``) and the index CSV.

    ``backend``: ``local``, ``ray`` (``ray_address``; ``cpus_per_run`` and ``gpus_per_run``, which may
    be fractional) or ``slurm`` (``slurm_partition``, ``timeout_min`` per job, the same resources).
    Example: ``run_grid("imp", {"lr": [0.01, 0.1], "seed": [0, 1, 2]}, ["--levels", "3"])``."""
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not cpus_per_run > 0 or not gpus_per_run >= 0:
        raise UserError(f"--cpus-per-run must be positive and --gpus-per-run non-negative, got "
                        f"{cpus_per_run} and {gpus_per_run}")
    check_backend(backend)
    runs = plan(command, grid, base)
    path = index_path(command, grid, base)
    for r in runs:  # --log wandb/mlflow: the sweep's runs grouped under its index's name
        r.argv = with_group(r.argv, path.stem)
    write_index(runs, path)
    from tqdm import tqdm

    bar = tqdm(total=len(runs), desc=f"sweep ({backend})", unit="run",
               disable=not progress or not sys.stderr.isatty())

    def finished(r: SweepRun, outcome: tuple[str, str, dict, str]) -> None:
        r.status, r.folder, r.metrics, r.error = outcome
        write_index(runs, path)
        bar.update()

    if backend == "local":
        for r in runs:
            bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in r.point.items()))
            finished(r, execute(r.argv))
    else:
        # a worker's thread count changes its results: give it the CPUs it was granted
        argvs = {id(r): r.argv if "--threads" in r.argv else [*r.argv, "--threads", str(max(1, int(cpus_per_run)))]
                 for r in runs}
        if backend == "ray":
            _on_ray(runs, argvs, finished, ray_address, cpus_per_run, gpus_per_run)
        else:
            _on_slurm(runs, argvs, finished, path.parent / ".submitit", cpus_per_run, gpus_per_run,
                      slurm_partition, timeout_min)
        # points that share a run folder (e.g. only --levels differs) meet its lock when run at once:
        # run those again, one after another, now that the others are done (each resumes the folder)
        for r in [r for r in runs if r.status == "failed" and "in use by another process" in r.error]:
            bar.update(-1)
            finished(r, execute(argvs[id(r)]))
    bar.close()
    return runs, path


def _worker_context() -> tuple[str, dict]:
    return os.getcwd(), {k: os.environ[k] for k in ENVIRONMENT if k in os.environ}


def _on_ray(runs: Sequence[SweepRun], argvs: dict, finished: Callable, address: Optional[str], cpus: float,
            gpus: float) -> None:
    """Every run a Ray task; results are recorded as they come back."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    have = ray.cluster_resources()
    for name, asked, flag in (("CPU", cpus, "--cpus-per-run"), ("GPU", gpus, "--gpus-per-run")):
        if asked > have.get(name, 0):  # Ray would wait for such a node forever
            raise UserError(f"{flag} {asked:g} is more than the Ray cluster has ({have.get(name, 0):g} {name}s)")
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute)
    cwd, env = _worker_context()
    pending = {task.remote(argvs[id(r)], cwd, env): r for r in runs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            r = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as exc:  # the worker died: report it, go on
                outcome = ("failed", "", {}, f"the Ray task failed: {type(exc).__name__}")
            finished(r, outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _on_slurm(runs: Sequence[SweepRun], argvs: dict, finished: Callable, folder: Path, cpus: float,
              gpus: float, partition: Optional[str], timeout_min: int) -> None:
    """Every run a Slurm job through submitit (its local executor where no Slurm is found)."""
    import submitit

    if gpus != int(gpus) or cpus != int(cpus):
        raise UserError(f"--backend slurm takes whole CPUs and GPUs per run, got --cpus-per-run {cpus:g} and "
                        f"--gpus-per-run {gpus:g} (Ray accepts fractions)")
    if timeout_min < 1:
        raise UserError(f"--timeout-min must be at least 1, got {timeout_min}")

    executor = submitit.AutoExecutor(folder=folder)
    parameters = dict(timeout_min=timeout_min, cpus_per_task=max(1, int(round(cpus))),
                      gpus_per_node=int(round(gpus)), name="lth-sweep")
    if partition and executor.cluster == "slurm":
        parameters["slurm_partition"] = partition
    executor.update_parameters(**parameters)
    print(f"sweep: submitit {executor.cluster} executor, jobs in {folder}", file=sys.stderr)
    cwd, env = _worker_context()
    jobs = [(executor.submit(execute, argvs[id(r)], cwd, env), r) for r in runs]
    try:
        while jobs:
            for job, r in [j for j in jobs if j[0].done()]:
                jobs.remove((job, r))
                try:
                    finished(r, job.result())
                except Exception as exc:  # the job died (killed, out of memory): report it, go on
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    finished(r, ("failed", "", {}, f"the job failed: {type(exc).__name__} {first}".strip()))
            time.sleep(0.5)
    except KeyboardInterrupt:
        for job, _ in jobs:
            job.cancel(check=False)
        raise


def print_table(runs: Sequence[SweepRun], path: Path) -> None:
    """The summary: one line per run with its grid values, status, the level reported, its density
    and test accuracy (percent) and folder; a folder that holds more levels than its point asked
    for (made by another command) is flagged."""
    names = list(runs[0].point) if runs else []
    print("  ".join(f"{n:>10}" for n in names)
          + f"  {'status':>7}  {'level':>5}  {'density':>8}  {'test acc':>8}  folder / error")
    for r in runs:
        density = r.metrics.get("density")
        accuracy = r.metrics.get("test_accuracy")
        level = r.metrics.get("at_level")
        more = r.metrics.get("levels_in_folder", 0) > r.metrics.get("levels", 0) if r.status == "done" else False
        print("  ".join(f"{r.point[n]:>10}" for n in names) + f"  {r.status:>7}  "
              + (f"{level:>5}" if level is not None else f"{'-':>5}") + "  "
              + (f"{100 * density:>7.2f}%" if density is not None else f"{'-':>8}") + "  "
              + (f"{100 * accuracy:>7.2f}%" if accuracy is not None else f"{'-':>8}") + "  "
              + (r.folder if r.status == "done" else r.error)
              + (f" (holds {r.metrics['levels_in_folder']} levels; shown at the last one asked for)" if more else ""))
    failed = sum(r.status == "failed" for r in runs)
    print(f"{len(runs) - failed} of {len(runs)} runs done" + (f", {failed} failed" if failed else "")
          + f"; index: {path}")


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose where runs execute (``--backend`` and its options), shared by
    ``python -m training sweep`` and ``python -m figures``; ``backend_options`` reads them back."""
    parser.add_argument("--backend", default="local", choices=BACKENDS,
                        help="where the runs execute: local = this process, one after another (default); "
                             "ray = Ray tasks; slurm = Slurm jobs through submitit (its local executor where "
                             "no Slurm is found)")
    parser.add_argument("--ray-address", help="with --backend ray: join this cluster (default: start Ray here)")
    parser.add_argument("--cpus-per-run", type=float, default=1, help="CPUs of each Ray task or Slurm job (default 1)")
    parser.add_argument("--gpus-per-run", type=float, default=0,
                        help="GPUs of each run; Ray accepts fractions (0.25: four small runs per GPU) (default 0)")
    parser.add_argument("--slurm-partition", help="with --backend slurm: the partition to submit to")
    parser.add_argument("--timeout-min", type=int, default=240, help="with --backend slurm: minutes per job (default 240)")


def backend_options(args: argparse.Namespace) -> dict:
    """``run_grid``'s keyword arguments from the flags of ``add_backend_flags``."""
    return dict(backend=args.backend, ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                gpus_per_run=args.gpus_per_run, slurm_partition=args.slurm_partition, timeout_min=args.timeout_min)


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m training sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one command over a grid of flag values, one run after another. Every run keeps its "
                    "own resumable folder: run the same sweep again to resume it. Any other flag is passed "
                    "to every run.",
        epilog="examples:\n"
               "  python -m training sweep imp --grid lr=0.01,0.1 --grid seed=0,1,2 --levels 8\n"
               "  python -m training sweep lot -R 10 --grid rewind=0,1ep,2ep -I 1\n"
               "  python -m training sweep at-init --grid score=snip,synflow,random --target-density 0.1\n"
               "\nwrites OUT/sweep-HASH.csv (OUT: the runs' --out, default runs): one row per run with its grid\n"
               "values, status, folder and the density and test accuracy of the last level it asked for (--levels,\n"
               "--rounds; at_level; levels_in_folder counts a shared folder's levels); read it with pandas.read_csv.")
    parser.add_argument("command", choices=runnable(), help="the run command to sweep")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                        help="a flag and its values (repeat for a grid; the first varies slowest)")
    add_backend_flags(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """``python -m training sweep COMMAND --grid F=V1,V2 [--grid ...] [flags of COMMAND]``."""
    from training.cli import run_command

    args, base = make_parser().parse_known_args(argv)
    progress = "--no-progress" not in base

    def body() -> int:
        runs, path = run_grid(args.command, parse_grid(args.grid), base, progress=progress, **backend_options(args))
        print_table(runs, path)
        return 1 if any(r.status == "failed" for r in runs) else 0

    return run_command(body, "interrupted: run the same sweep again to resume it")
