"""Run folders: where a run's files live, how each level is trained and recorded, and resume.

A run lives in ``OUT/ALGORITHM-HASH/`` (the hash covers every hyperparameter that differs from
its default and the execution settings that change results when not at their defaults: device
type, CPU threads, precision, ... ``training.hparams.ExecutionHparams`` has the table)::

    config.json          the full configuration, and the software that ran it ("provenance": one
                         entry per start that changed the software or the levels asked for)
    .lock                held (``flock``) by the one process that works in the folder; holds its PID
    metrics.jsonl        one line per evaluation, written while training runs
    summary.json / .csv  one entry per finished level: density, accuracy, checkpoint paths
    level_L/mask.pt      the level's mask
    level_L/init.pt      W^0 (masked), level_L/rewind.pt: W^k (masked), level_L/final.pt: trained
    level_L/state.pt     resume state while the level trains (removed once final.pt exists)

Each stage checks whether its output exists and skips itself if so: a killed run started again
with the same command continues where it stopped. Resuming refuses a folder whose stored
configuration differs from the one asked for (a default that changed in the code since the folder
was made leaves the hash, which covers only non-default values, unchanged), and one process at a
time works in a folder: a second one fails at once.
"""
from __future__ import annotations

import contextlib
import contextvars
import csv
import dataclasses
import fcntl
import io
import json
import math
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from training.engine import checkpoint as ckpt_io
from training.engine import distributed
from training.cli import writable_dir
from training.engine.cost import training_cost
from training.data import Dataset, load_dataset
from training.errors import RunStopped, TrainingDiverged, UserError
from training.hparams import Config, TrainingHparams, dumps
from training.engine.extensions import Extension
from training.engine.loop import apply_execution, check_execution, check_lengths, train
from training.sparsity.masks import Mask, check_mask, collapse_warnings, count, layer_counts
from training.engine.metrics_log import MetricsLog
from training.engine import loggers
from training.engine.loggers import LogSettings
from training.models import build_model, check_model_name
from training.engine.provenance import provenance

MASK_FORMAT = "lth-toolkit/mask"
CSV_CHECKPOINTS = ("mask", "init", "rewind", "final")  # summary.csv columns KIND_path


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU. Under torchrun (``WORLD_SIZE`` > 1) a
    CUDA run trains on ``cuda:LOCAL_RANK``."""
    if name in ("auto", "cpu", "cuda") or name.startswith("cuda:"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
        ranked = distributed.device(name)
        if ranked is not None:
            return ranked
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def save_mask(mask: Mask, path: Path) -> None:
    """Write ``mask`` to ``path`` (under torchrun: rank 0, between barriers; every rank calls it)."""
    with distributed.writing() as main:
        if main:
            ckpt_io.atomic_save({"format": MASK_FORMAT, "mask": {k: v.cpu() for k, v in mask.items()}}, path)


def load_mask(path: Path) -> Mask:
    obj = ckpt_io.safe_load(path, "mask file")
    if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
        obj = {"format": MASK_FORMAT, "mask": obj["mask"]}
    if not isinstance(obj, dict) or obj.get("format") != MASK_FORMAT or not isinstance(obj.get("mask"), dict):
        raise UserError(f"{path} is not a mask file written by this toolkit")
    return obj["mask"]


LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # lock file -> [file descriptor, users in this process]
_held_guard = threading.Lock()


class FolderLock:
    """An exclusive ``flock`` on ``FOLDER/.lock`` that holds the holder's PID.

    A second process that asks for the same folder gets a ``UserError`` at once, naming the
    folder and the holder's PID. The kernel drops the lock when the holder exits, however it
    exits (``kill -9`` included), so a stale ``.lock`` file never blocks a rerun. Within one
    process the lock is shared: a notebook or test may run the same folder again while an
    earlier ``Run`` object still exists; ``release`` drops it when its last user lets go."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._key = str(self.path.resolve())
        self._released = False
        with _held_guard:
            if self._key in _held:
                _held[self._key][1] += 1
                return
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise UserError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(f"run folder {self.folder} is in use by another process (PID {holder}); "
                                "wait for it to finish or stop it, then run the command again") from None
            except OSError as exc:
                os.close(fd)
                raise UserError(f"cannot lock run folder {self.folder} ({exc.strerror or exc}); "
                                "is it on a file system without file locks?") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _held[self._key] = [fd, 1]

    def release(self) -> None:
        """Let go of the lock (once; later calls do nothing)."""
        if self._released:
            return
        self._released = True
        _release(self._key)


def _release(key: str) -> None:
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _held[key]
            try:
                fcntl.flock(entry[0], fcntl.LOCK_UN)
            finally:
                os.close(entry[0])


def _read_holder(fd: int) -> str:
    """The PID written in a lock file by its holder ("unknown" if it has not written it yet)."""
    for _ in range(20):  # the holder writes its PID right after taking the lock
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return a == b


def config_differences(stored: dict, now: dict) -> list[str]:
    """``"section.field stored A, now B"`` for every field that both configuration dicts (as in
    ``config.json``) have and that differs. Fields only one side knows are ignored: a field added
    to the code later sits at its default, which the run hash already vouches for."""
    diffs = []
    for section in sorted(set(stored) | set(now)):
        old, new = stored.get(section), now.get(section)
        if old is None and new is None:
            continue
        if old is None or new is None:
            diffs.append(f"{section} stored {'none' if old is None else 'set'}, now {'none' if new is None else 'set'}")
            continue
        for name in sorted(set(old) & set(new)):
            if not _same(old[name], new[name]):
                diffs.append(f"{section}.{name} stored {old[name]!r}, now {new[name]!r}")
    return diffs


def _versions(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("started", "levels")}


def planned_levels(stored: dict) -> Optional[int]:
    """The number of levels the latest start of a run folder asked for, from its ``config.json``
    dict ``stored`` (the last provenance entry that records ``levels``); None when no start
    recorded it (folders made before it was recorded, or by a command that does not say)."""
    history = stored.get("provenance")
    if isinstance(history, dict):
        history = [history]
    for record in reversed(history if isinstance(history, list) else []):
        levels = record.get("levels") if isinstance(record, dict) else None
        if isinstance(levels, int) and not isinstance(levels, bool) and levels >= 1:
            return levels
    return None


def read_run_config(run_dir: Path, remedy: str = "give a run folder written by this toolkit") -> dict:
    """The ``config.json`` of run folder ``run_dir`` as a dict with a ``config`` dict inside; a
    ``UserError`` (one line ending with ``remedy``) when it is missing, unreadable or malformed."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run folder (no config.json); {remedy}")
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict) or not isinstance(stored["config"], dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}), so what the run folder holds is "
                        f"unknown; {remedy}") from None
    return stored


_allow_diverged: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_diverged", default=False)


@contextlib.contextmanager
def allowing_diverged(allow: bool = True):
    """Inside the block, a level that ends at chance is marked and warned about but does not stop
    the run (``--allow-diverged``; the figures, whose sweeps reach collapse on purpose)."""
    token = _allow_diverged.set(allow)
    try:
        yield
    finally:
        _allow_diverged.reset(token)


def diverged_reason(results: dict, records: Sequence[dict], data: Dataset) -> Optional[str]:
    """Why a level learned nothing, or None. Chance is the most frequent class's share of the test
    set. A level learned nothing when its test and training accuracy both end within 1 point of
    chance, or when its training loss (the logged means between evaluations) never fell below a
    uniform prediction's, ln(classes) nats, and its test accuracy ends within 5 points of chance
    (the loss alone is not enough: over one long evaluation interval its mean can stay high while
    the network learns; and test accuracy alone is not: on a small test set a network that learned
    something can sit at chance)."""
    labels = getattr(data.test, "y", None)
    chance = (float(torch.bincount(labels.cpu()).max()) / len(labels) if labels is not None and len(labels)
              else 1 / data.num_classes)
    uniform = math.log(data.num_classes)
    losses = [r["train_loss"] for r in records if r.get("train_loss") is not None]
    test, train = results.get("test_accuracy"), results.get("train_accuracy")
    if test is not None and train is not None and max(test, train) <= chance + 0.01:
        return (f"test accuracy {100 * test:.1f} % and training accuracy {100 * train:.1f} % against chance "
                f"{100 * chance:.1f} %")
    if losses and not min(losses) < uniform and test is not None and test <= chance + 0.05:
        return (f"training loss never below {uniform:.3f} nats, a uniform prediction's, and test accuracy "
                f"{100 * test:.1f} % against chance {100 * chance:.1f} %")
    return None


def _has_conv2d(config: Config) -> bool:
    """Whether the run's model has a 2-D convolution (``--channels-last`` applies to those only)."""
    from training.data import dataset_spec

    spec = dataset_spec(config.dataset.dataset)
    model = build_model(config.model.model, spec.classes, spec.shape, config.training.seed)
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def nonzero_density(checkpoint: dict) -> Optional[float]:
    """Fraction of a checkpoint's prunable weights (its mask's) that are non-zero: what the network
    uses at inference. Equals the mask's density when pruned weights are zero; RISE's frozen
    weights make it higher. None for a checkpoint without a mask."""
    mask = checkpoint.get("mask")
    if mask is None:
        return None
    state = checkpoint["state_dict"]
    nonzero = sum(int((state[name] != 0).sum()) for name in mask)
    return nonzero / sum(state[name].numel() for name in mask)


@dataclass
class Run:
    """One run folder and everything needed to train its levels."""

    config: Config
    algorithm: str
    root: Path
    device: torch.device
    data_dir: Optional[str] = None
    progress: bool = True
    extra_identity: tuple[str, ...] = ()
    on_epoch_end: Optional[Callable[[int], None]] = None
    validate: Optional[Callable[[nn.Module], None]] = None
    save_at: tuple = ()  # Steps where `train --save-at` keeps extra checkpoints; checked against the length
    model_seed: Optional[int] = None  # the seed W^0 was drawn from, when not the run's (reinit controls)
    out_flag: str = "--out"  # how error messages name ``root`` to the user
    # the levels this start means to train, recorded in config.json's provenance so that
    # ``python -m training runs`` can tell a finished run from a stopped one (None: not recorded)
    levels: Optional[int] = None
    # the earlier levels level L starts from (its mask, its rewind point): a level at chance stops the
    # run only when a later level builds on it (IMP: the previous level and level 0's W^k)
    builds_on: Callable[[int], set] = field(default=lambda level: {0, level - 1} - {-1, level})
    # TensorBoard / W&B / MLflow mirrors of metrics.jsonl (None: what --log asked; training.engine.loggers)
    logging: Optional["LogSettings"] = None
    data: Dataset = field(init=False)

    def __post_init__(self) -> None:
        check_model_name(self.config.model.model)
        self.root = writable_dir(self.root, self.out_flag)  # before anything slow
        # the device the run trains on is part of its execution settings (hence of its identity
        # when not the CPU), and so is the number of processes training it (torchrun); a copy,
        # so that the caller's configuration is left as it was
        self.config = dataclasses.replace(
            self.config, execution=dataclasses.replace(self.config.execution, device=self.device.type,
                                                       world_size=distributed.world_size()))
        if self.config.execution.channels_last and not _has_conv2d(self.config):
            # nothing to lay out: the flag changes no number, so it is no part of the run's identity
            self.config.execution = dataclasses.replace(self.config.execution, channels_last=False)
        distributed.setup(self.device)  # under torchrun: join the process group (once)
        check_execution(self.config.execution, self.device)
        self.hash = self.config.hash(self.algorithm, *self.extra_identity)
        # the thread count applies from here on: the data's normalisation sums depend on it too
        apply_execution(self.config.execution, self.device)
        self.dir = self.root / f"{self.algorithm}-{self.hash}"
        self._lock: Optional[FolderLock] = None
        with distributed.writing() as main:  # rank 0 first: it may generate the dataset's cache file
            if main:
                self.data = load_dataset(self.config.dataset, self.data_dir).to(self.device)
        if not distributed.is_main():
            self.data = load_dataset(self.config.dataset, self.data_dir).to(self.device)
        hp = self.config.training
        self.iterations_per_epoch = -(-len(self.data.train) // max(1, hp.batch_size))
        rewind = self.config.pruning.rewind if self.config.pruning else "0"
        self.total, self.rewind_iteration, _ = check_lengths(hp, self.iterations_per_epoch, rewind)
        # everything that can be checked is checked before the run folder exists
        reference = build_model(self.config.model.model, self.data.num_classes, self.data.input_shape,
                                self.config.training.seed)
        if self.validate is not None:
            self.validate(reference)
        for step in self.save_at:
            if step.iterations(self.iterations_per_epoch) > self.total:
                raise UserError(f"--save-at point {step} is after the end of training ({self.config.training.train_for}"
                                f" = {self.total} it)")
        self.log = MetricsLog(self.dir / "metrics.jsonl")
        failure: Optional[UserError] = None
        with distributed.writing() as main:  # under torchrun, rank 0 alone holds and writes the folder
            if main:
                try:
                    self._open_folder()
                except UserError as exc:
                    failure = exc
        told = distributed.broadcast_object(None if failure is None else (str(failure), getattr(failure, "exit_code", 2)))
        if failure is not None:
            raise failure
        if told is not None:  # rank 0 refused the folder: every rank stops with its message
            error = UserError(told[0])
            error.exit_code = told[1]
            raise error

    def _open_folder(self) -> None:
        """Create the run folder, take its lock, write or check ``config.json`` and start the
        ``--log`` mirrors (rank 0's work under torchrun)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"run folder {self.dir} is a file; move it away or use another {self.out_flag}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"run folder {self.dir} cannot be created: {exc.strerror or exc}") from None
        self._lock = FolderLock(self.dir)  # from here on this process is the folder's only writer
        weakref.finalize(self, self._lock.release)
        try:
            self._write_or_check_config()
            self.log.mirror = loggers.start(self, self.logging)
            if self.log.mirror is not None:
                weakref.finalize(self, self.log.mirror.close)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder's lock (it is also released when this object is garbage collected
        or the process exits). The object stays readable (``dir``, ``summary``)."""
        mirror = getattr(getattr(self, "log", None), "mirror", None)
        if mirror is not None:  # ends the --log runs (TensorBoard, W&B, MLflow)
            mirror.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_or_check_config(self) -> None:
        """Write ``config.json`` for a new folder; for an existing one, refuse a configuration that
        differs from the stored one and record a change of software versions."""
        path = self.dir / "config.json"
        now = provenance()
        now_record = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **now}
        if self.levels is not None:
            now_record["levels"] = int(self.levels)
        if not path.exists():
            ckpt_io.atomic_write_text(path, dumps(
                {"algorithm": self.algorithm, "hash": self.hash, "identity": list(self.extra_identity),
                 "config": self.config.to_dict(), "provenance": [now_record]}))
            return
        stored = read_run_config(self.dir, f"delete {self.dir} to start it again, or use another {self.out_flag}")
        stored_config = stored["config"]
        if "execution" not in stored_config and self.device.type == "cpu" and distributed.is_main():
            # made before the thread count was part of a run's identity (torch's default count then)
            print(f"warning: {self.dir.name} was made before the CPU thread count was recorded; the levels "
                  f"trained from now on use {self.config.execution.threads} thread(s), so their last bits can differ "
                  f"from what its first start would have given", file=sys.stderr)
        # execution settings: the hash already covers those in the identity; the others (the CPU
        # threads of a GPU run) may change from one start to the next
        diffs = config_differences({k: v for k, v in stored_config.items() if k != "execution"},
                                   {k: v for k, v in self.config.to_dict().items() if k != "execution"})
        if stored.get("algorithm", self.algorithm) != self.algorithm:
            diffs.insert(0, f"algorithm stored {stored['algorithm']!r}, now {self.algorithm!r}")
        if list(stored.get("identity", self.extra_identity)) != list(self.extra_identity):
            diffs.insert(0, f"identity stored {stored['identity']!r}, now {list(self.extra_identity)!r}")
        if diffs:
            raise UserError(
                f"run folder {self.dir} was made with a different configuration ({'; '.join(diffs)}), probably "
                "by a version of the toolkit with other defaults; resuming would mix the two. Use another "
                f"{self.out_flag} (or delete the folder) to start afresh, or finish it with the toolkit "
                "version recorded in its config.json")
        history = stored.get("provenance")
        if isinstance(history, dict):
            history = [history]
        if not isinstance(history, list):
            history = []  # a folder made before versions were recorded
        last = history[-1] if history and isinstance(history[-1], dict) else None
        same_levels = self.levels is None or planned_levels(stored) == self.levels
        if last is not None and _versions(last) == now and same_levels:
            return
        if last is not None and _versions(last) != now:
            changed = ", ".join(f"{k} {last.get(k)} -> {v}" for k, v in now.items() if last.get(k) != v)
            print(f"warning: resuming {self.dir} with other software than it was started with ({changed}); "
                  "recorded in its config.json", file=sys.stderr)
        stored["provenance"] = history + [now_record]
        ckpt_io.atomic_write_text(path, dumps(stored))

    # --- models and checkpoints -------------------------------------------------------------

    def new_model(self) -> nn.Module:
        """W^0: the model initialised from the run seed, on the run's device."""
        return build_model(self.config.model.model, self.data.num_classes, self.data.input_shape,
                           self.config.training.seed).to(self.device)

    def level_dir(self, level: int) -> Path:
        return self.dir / f"level_{level}"

    def save(self, model: nn.Module, mask: Optional[Mask], iteration: int, level: int, kind: str,
             extra: Optional[dict] = None) -> Path:
        """Write checkpoint ``level_L/KIND.pt`` of ``model`` at ``iteration``; return its path.

        ``extra["masked_weights"]`` says what the weights outside the mask hold: ``"zero"``
        (pruned, the default) or ``"frozen"`` (RISE: kept at their W^k values)."""
        path = self.level_dir(level) / f"{kind}.pt"
        model_seed = self.config.training.seed if self.model_seed is None else self.model_seed
        meta = {"run_hash": self.hash, "algorithm": self.algorithm, "level": level, "kind": kind,
                "seed": self.config.training.seed, "config": self.config.to_dict(), "masked_weights": "zero",
                **(extra or {})}
        with distributed.writing() as main:  # under torchrun: rank 0 writes, every rank then sees it
            if main:
                ckpt_io.atomic_save(ckpt_io.make_checkpoint(
                    model, model_name=self.config.model.model, num_classes=self.data.num_classes,
                    input_shape=self.data.input_shape, seed=model_seed, dataset=self.config.dataset,
                    mask=mask, iteration=iteration, iterations_per_epoch=self.iterations_per_epoch, meta=meta), path)
        return path

    def load_state(self, level: int, kind: str) -> dict:
        return ckpt_io.read_checkpoint(self.level_dir(level) / f"{kind}.pt")["state_dict"]

    def score_context(self, state: Optional[dict] = None, examples: int = 1024):
        """The network at ``state`` (W^0 if None) and up to ``examples`` training examples (a fixed
        seeded choice), for the SNIP and SynFlow scores."""
        from training.sparsity.saliency import ScoreContext
        from training.engine.seeding import generator

        model = self.new_model()
        if state is not None:
            model.load_state_dict(state)
        n = len(self.data.train)
        idx = torch.randperm(n, generator=generator(self.config.training.seed, "score-batches"))[: min(n, examples)]
        idx = idx.to(self.data.train.x.device)
        size = self.config.training.batch_size
        batches = [(self.data.train.x[idx[i : i + size]], self.data.train.y[idx[i : i + size]])
                   for i in range(0, len(idx), size)]
        return ScoreContext(model, self.data.input_shape, batches)

    def level_done(self, level: int) -> bool:
        return (self.level_dir(level) / "final.pt").exists()

    def mask_for(self, level: int, make: Callable[[], Mask]) -> Mask:
        """The level's mask: read from ``level_L/mask.pt``, or made by ``make`` and saved there (with a
        warning on stderr for each layer it disconnects or collapses)."""
        path = self.level_dir(level) / "mask.pt"
        if distributed.broadcast_object(path.exists()):  # rank 0's answer, under torchrun
            mask = load_mask(path)
        else:
            # under torchrun every rank makes it (from the same files) and the checksums must agree
            mask = make()
            distributed.check_same(mask, f"the mask made for level {level}")
            save_mask(mask, path)
            if distributed.is_main():
                for line in collapse_warnings(mask):
                    print(f"warning: level {level}: {line}", file=sys.stderr)
        distributed.check_same(mask, f"the mask of level {level}")
        return {k: v.to(self.device) for k, v in mask.items()}

    # --- training a level -------------------------------------------------------------------

    def train_level(self, level: int, model: nn.Module, mask: Optional[Mask], start: int,
                    save_points: Iterable[int] = (), on_save: Optional[Callable[[int], None]] = None,
                    frozen: Optional[dict[str, torch.Tensor]] = None, hp: Optional[TrainingHparams] = None,
                    end: Optional[int] = None, meta: Optional[dict] = None,
                    extensions: Sequence[Extension] = ()) -> dict:
        """Train ``model`` from ``start`` to ``end`` (default: the run's end) with ``hp`` (default: the
        run's training hyperparameters) and an algorithm's ``extensions`` (``training.engine.extensions``),
        resuming from ``level_L/state.pt`` if present; write ``final.pt`` (with ``meta`` added to
        its metadata) and return its metrics.

        Weights outside ``mask`` are held at zero, or at ``frozen``'s values (RISE)."""
        if mask is not None:
            check_mask(mask, model)
        hp = hp or self.config.training
        for earlier in sorted(self.builds_on(level)):  # a rerun must not build on a level at chance
            reason = self._diverged(earlier)
            if reason and self._stops_at(earlier):
                raise RunStopped(self._stop_message(earlier, reason))
        end = self.total if end is None else end
        state = self.level_dir(level) / "state.pt"
        try:
            metrics = train(model, self.data, hp, start=start, end=end, mask=mask,
                            log=self.log, level=level, save_points=save_points, on_save=on_save, state_path=state,
                            progress=self.progress, on_epoch_end=self.on_epoch_end, frozen=frozen,
                            extensions=extensions, execution=self.config.execution)
        except TrainingDiverged as exc:  # NaN or inf: the level never finishes; summary.json says why
            self.write_summary(diverged=f"level {level}: {exc}")
            raise
        distributed.barrier()  # rank 0 has logged the level's last evaluation: every rank reads the log
        results = {k: v for k, v in metrics.items() if k.startswith(("test_", "val_", "train_"))}
        results["stopped_at"] = metrics["stopped_at"]
        cost = training_cost(model, self.data.input_shape, mask, start, metrics["stopped_at"], len(self.data.train),
                             hp.batch_size)
        records = [r for r in self.log.read() if r.get("level") == level and r.get("iteration", 0) > start]
        reason = diverged_reason(results, records, self.data)
        # with early stopping the weights are those of the best validation evaluation
        self.save(model, mask, metrics.get("iteration", end), level, "final",
                  {"results": results, "backprop_macs": cost, "start_iteration": start,
                   "masked_weights": "zero" if frozen is None else "frozen", **(meta or {}),
                   **({"diverged": f"{reason} (lr {hp.lr:g})"} if reason else {})})
        if distributed.is_main() and state.exists():
            os.unlink(state)
        if reason:
            if self._stops_at(level):  # one line: the error says it all
                self.write_summary()
                raise RunStopped(self._stop_message(level, f"{reason} (lr {hp.lr:g})"))
            if distributed.is_main():
                print(f"warning: level {level} ended at chance: {reason} (lr {hp.lr:g})", file=sys.stderr)
        return metrics

    def _diverged(self, level: int) -> Optional[str]:
        path = self.level_dir(level) / "final.pt"
        return ckpt_io.read_checkpoint(path)["meta"].get("diverged") if path.exists() else None

    def _stops_at(self, level: int) -> bool:
        """Whether a level that ended at chance stops the run: when a later planned level builds on it
        (``builds_on``), unless ``allowing_diverged`` (``--allow-diverged``) is in force."""
        if _allow_diverged.get():
            return False
        later = range(level + 1, self.levels) if self.levels is not None else [level + 1]
        return any(level in self.builds_on(other) for other in later)

    def _stop_message(self, level: int, reason: str) -> str:
        return (f"level {level} of {self.dir.name} ended at chance ({reason}), and the levels after it would start "
                f"from a network that learned nothing; lower --lr, or give --allow-diverged to go on anyway")

    # --- summary ----------------------------------------------------------------------------

    def summary(self) -> list[dict]:
        """One entry per finished level, read back from the ``final.pt`` checkpoints."""
        entries, level = [], 0
        while self.level_done(level):
            final = ckpt_io.read_checkpoint(self.level_dir(level) / "final.pt")
            kept, total = count(final["mask"]) if final["mask"] is not None else (None, None)
            rel = lambda kind: f"level_{level}/{kind}.pt"  # noqa: E731
            steps = [p.stem for p in self.level_dir(level).glob("step_*.pt") if p.stem[5:].isdigit()]
            kinds = ["mask", "init", "rewind", "final"] + sorted(steps, key=lambda stem: int(stem[5:]))
            macs = final["meta"].get("backprop_macs", {}).get("total")
            cumulative = (entries[-1]["cumulative_backprop_macs"] if entries else 0.0) + (macs or 0.0)
            entries.append({
                "level": level, "density": final["meta"]["density"],
                "density_trained": final["meta"]["density"], "density_nonzero": nonzero_density(final),
                "weights_kept": kept, "weights_prunable": total,
                **({"diverged": final["meta"]["diverged"]} if final["meta"].get("diverged") else {}),
                "layers": layer_counts(final["mask"]) if final["mask"] is not None else {},
                **final["meta"].get("results", {}),
                "backprop_macs": macs, "cumulative_backprop_macs": cumulative,
                "checkpoints": {k: rel(k) for k in kinds if (self.level_dir(level) / f"{k}.pt").exists()},
            })
            level += 1
        return entries

    def write_summary(self, diverged: Optional[str] = None) -> list[dict]:
        """Write ``summary.json`` and ``summary.csv`` (one row per finished level; checkpoint paths
        relative to the run folder in ``mask_path`` ... ``final_path``, and ``step_paths``
        separated by ``;``); return the entries. ``diverged``: why training stopped in a level that
        never finished (a NaN loss), recorded as the summary's top-level ``diverged``."""
        entries = self.summary()
        with distributed.writing() as main:  # under torchrun: rank 0 writes (every rank calls this)
            if main:
                self._write_summary_files(entries, diverged)
        return entries

    def _write_summary_files(self, entries: list[dict], diverged: Optional[str] = None) -> None:
        ckpt_io.atomic_write_text(self.dir / "summary.json", dumps(
            {"run": self.hash, "algorithm": self.algorithm, "folder": str(self.dir),
             **({"diverged": diverged} if diverged else {}),
             "execution": dataclasses.asdict(self.config.execution), "levels": entries}))
        columns = ["level", "density", "density_trained", "density_nonzero", "weights_kept", "weights_prunable",
                   "diverged", "test_accuracy", "test_loss",
                   "val_accuracy", "val_loss", "train_accuracy", "train_loss", "backprop_macs",
                   "cumulative_backprop_macs"] + [f"{kind}_path" for kind in CSV_CHECKPOINTS] + ["step_paths"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
        writer.writeheader()
        for entry in entries:
            paths = entry["checkpoints"]
            row = {**entry, **{f"{kind}_path": paths.get(kind, "") for kind in CSV_CHECKPOINTS},
                   "step_paths": ";".join(v for k, v in paths.items() if k.startswith("step_"))}
            writer.writerow(row)
        ckpt_io.atomic_write_text(self.dir / "summary.csv", buffer.getvalue())
        if self.log.mirror is not None:  # --log: each new level's numbers as summary/NAME
            self.log.mirror.levels(entries)

    def print_summary(self, entries: list[dict]) -> None:
        has_val = any("val_accuracy" in e for e in entries)
        # RISE: the trained fraction is not what the network uses at inference; show both
        both = any(e.get("density_nonzero") is not None and abs(e["density_nonzero"] - e["density"]) > 1e-3
                   for e in entries)
        head = f"{'level':>5}  {'density':>8}" + (f"  {'non-zero':>8}" if both else "") + f"  {'test acc':>8}"
        print(head + (f"  {'val acc':>8}" if has_val else "") + f"  {'backprop MACs (cumulative)':>26}")
        if both:
            print("(density: the fraction of weights trained; non-zero: the fraction the network uses at inference)")
        for e in entries:
            line = f"{e['level']:>5}  {100 * e['density']:>7.2f}%"
            if both:
                line += f"  {100 * (e.get('density_nonzero') or e['density']):>7.2f}%"
            line += f"  {100 * e['test_accuracy']:>7.2f}%"
            if has_val:
                line += f"  {100 * e.get('val_accuracy', float('nan')):>7.2f}%"
            print(line + f"  {e['cumulative_backprop_macs']:>26.3e}")

