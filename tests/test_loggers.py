"""--log tensorboard,wandb,mlflow: what each backend wrote, read back with its own reader, matches
metrics.jsonl and summary.json; a resumed run continues the same logged run with no duplicated
points; a missing extra is one line; the logging flags leave the run's identity alone."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from training.__main__ import main
from training.algorithms.imp import run_imp
from training.engine import loggers
from training.engine.loggers import LogSettings, logging_to

AVAILABLE = tuple(name for name, (module, _) in loggers.BACKENDS.items() if importlib.util.find_spec(module))
CLI = ["imp", "--levels", "1", "--train-for", "2ep", "--mnist1d-samples", "500", "--model", "mnist1d_mlp",
       "--batch-size", "40", "--eval-every", "1ep", "--no-progress"]


@pytest.fixture(autouse=True)
def _restore_requested():
    """A parse with --log changes what later runs of this process log: put it back."""
    before = loggers._requested
    yield
    loggers._requested = before


class Killed(Exception):
    pass


def expected_steps(records):
    """The step of each metrics.jsonl record, computed here from its definition: level 0's
    iterations, then each level one step after the previous level's last, counting iterations."""
    steps, previous = [], None
    for r in records:
        if previous is None:
            steps.append(r["iteration"])
        elif r["level"] == previous["level"]:
            steps.append(steps[-1] + r["iteration"] - previous["iteration"])
        else:
            steps.append(steps[-1] + 1)
        previous = r
    return steps


def numeric(record):
    """The numbers of a record but its wall-clock ``seconds`` (a level trained again after a resume
    has other timings; the backend keeps those of the first attempt, the only ones sent)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "seconds"}


@pytest.fixture(scope="module")
def logged(tmp_path_factory, data_dir):
    """A 3-level IMP run (rewind to 1 epoch) logged to every installed backend, killed in level 1,
    its level-1 resume state deleted (so level 1 is trained and logged again from its start), then
    resumed to the end."""
    if not AVAILABLE:
        pytest.skip("no logging backend installed")
    out = tmp_path_factory.mktemp("logged")
    cfg = _config
    calls = []

    def kill(epoch):
        calls.append(epoch)
        if len(calls) == 3:  # level 0 has two epoch ends; the third is inside level 1
            raise Killed

    settings = LogSettings(AVAILABLE, project="lth-test", group="g1")
    with logging_to(settings):
        with pytest.raises(Killed):
            run_imp(cfg(), levels=3, out=out, progress=False, on_epoch_end=kill)
        run_dir = next(out.glob("imp-*"))
        records_at_kill = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        (run_dir / "level_1" / "state.pt").unlink()
        import gc

        gc.collect()  # the killed attempt's Run (held by the traceback) lets go of its logged runs
        run = run_imp(cfg(), levels=3, out=out, progress=False)
        run.close()
    records = [json.loads(l) for l in (run.dir / "metrics.jsonl").read_text().splitlines()]
    levels = json.loads((run.dir / "summary.json").read_text())["levels"]
    assert any(r["level"] == 1 for r in records_at_kill)  # level 1 was logged before the kill
    return run, records, levels, out


def _config():
    cfg = tiny_config(train_for="3ep")
    cfg.pruning.rewind = "1ep"
    return cfg


def test_steps_follow_the_definition(logged):
    _, records, _, _ = logged
    steps = expected_steps(records)
    assert steps == sorted(set(steps))  # strictly increasing
    assert [s for r, s in zip(records, steps) if r["level"] == 0] == [r["iteration"] for r in records if r["level"] == 0]


# --- TensorBoard -------------------------------------------------------------------------------

def tensorboard_points(run_dir):
    """Every (step, value) each tag got, over all event files, read with TensorBoard's own loader
    (raw events: no purging, so duplicates would show)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    points, texts = {}, {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    points.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "text":
                    texts[value.tag] = tensor_util.make_ndarray(value.tensor).item().decode()
                elif value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    points.setdefault(value.tag, []).append((event.step, float(tensor_util.make_ndarray(value.tensor))))
    return points, texts


def test_tensorboard_matches_metrics_jsonl_without_duplicates(logged):
    pytest.importorskip("tensorboard")
    run, records, levels, _ = logged
    points, texts = tensorboard_points(run.dir)
    steps = expected_steps(records)
    for name in ("test_accuracy", "train_loss", "lr", "iteration", "level"):
        expected = [(s, r[name]) for r, s in zip(records, steps) if r.get(name) is not None]
        got = points[name]
        assert [s for s, _ in got] == [s for s, _ in expected], name  # same steps, each once
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), name
    for name in ("test_accuracy", "density", "weights_kept"):
        assert points[f"summary/{name}"] == [(e["level"], pytest.approx(e[name], rel=1e-6)) for e in levels]
    assert "training.lr" in texts["config/text_summary"] and "pruning.rewind" in texts["config/text_summary"]


# --- Weights & Biases --------------------------------------------------------------------------

def wandb_records(path):
    """The records of an offline ``.wandb`` file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, partial = Path(path).read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, or last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial + chunk if kind == 4 else chunk)
            partial = b""
            yield record
        elif kind in (2, 3):  # first or middle piece
            partial += chunk


def wandb_history(run_dir):
    rows, runs = [], []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            elif kind == "run":
                runs.append(record.run)
    return rows, runs


def test_wandb_offline_run_matches_metrics_jsonl_and_resumes_the_same_run(logged):
    pytest.importorskip("wandb")
    run, records, levels, _ = logged
    rows, runs = wandb_history(run.dir)
    state = json.loads((run.dir / "loggers.json").read_text())["wandb"]
    assert len(runs) == 2  # the killed start and the resume: two offline segments of one run
    assert {r.run_id for r in runs} == {state["id"]} and {r.display_name for r in runs} == {run.dir.name}
    assert {r.run_group for r in runs} == {"g1"} and {r.project for r in runs} == {"lth-test"}
    assert any(item.key == "training" and json.loads(item.value_json)["lr"] == run.config.training.lr
               for item in runs[0].config.update)
    steps = [row["_step"] for row in rows]
    assert steps == sorted(set(steps)) == expected_steps(records)  # one row per record, none twice
    for row, record in zip(rows, records):
        for name, value in numeric(record).items():
            assert row[name] == pytest.approx(value), name
    by_level = {row["summary/level"]: row for row in rows if "summary/level" in row}
    assert sorted(by_level) == [e["level"] for e in levels]
    for e in levels:
        assert by_level[e["level"]]["summary/test_accuracy"] == pytest.approx(e["test_accuracy"])
        assert by_level[e["level"]]["summary/density"] == pytest.approx(e["density"])


# --- MLflow ------------------------------------------------------------------------------------

def test_mlflow_file_store_matches_metrics_jsonl_and_resumes_the_same_run(logged, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    run, records, levels, out = logged
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("lth-test")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1  # the resume continued the same MLflow run
    info = found[0]
    assert info.info.run_id == json.loads((run.dir / "loggers.json").read_text())["mlflow"]["id"]
    assert info.info.run_name == run.dir.name and info.data.tags["group"] == "g1"
    assert info.data.params["training.lr"] == str(run.config.training.lr)
    steps = expected_steps(records)
    for name in ("test_accuracy", "train_loss", "epoch"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(info.info.run_id, name))
        expected = [(s, r[name]) for r, s in zip(records, steps) if r.get(name) is not None]
        assert [s for s, _ in history] == [s for s, _ in expected], name
        assert [v for _, v in history] == pytest.approx([v for _, v in expected]), name
    history = sorted((m.step, m.value) for m in client.get_metric_history(info.info.run_id, "summary/test_accuracy"))
    assert history == [(e["level"], pytest.approx(e["test_accuracy"])) for e in levels]


# --- the command line --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", list(loggers.BACKENDS))
def test_a_missing_extra_is_one_line_before_any_work(backend, tmp_path, monkeypatch, capsys):
    module, extra = loggers.BACKENDS[backend]
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to imports
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:  # a bad flag: argparse exits, as for any other flag
        main([*CLI, "--out", str(out), "--log", f"tensorboard,{backend}" if backend != "tensorboard" else backend])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert f'pip install "lth-toolkit[{extra}]"' in err and "Traceback" not in err
    assert not out.exists()  # nothing started


def test_an_unknown_backend_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*CLI, "--out", str(tmp_path / "out"), "--log", "tensorbored"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorbored" in err and "tensorboard, wandb, mlflow" in err


def test_log_flags_keep_the_run_folder_and_log_a_finished_run(data_dir, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    assert main([*CLI, "--out", str(out)]) == 0
    plain = capsys.readouterr().out.strip().splitlines()[-1]
    assert main([*CLI, "--out", str(out), "--log", "tensorboard", "--log-project", "p", "--log-group", "g",
                 "--mlflow-uri", "http://127.0.0.1:9"]) == 0
    logged = capsys.readouterr().out.strip().splitlines()[-1]
    assert plain == logged and plain.startswith("run folder: ")
    run_dir = Path(plain.removeprefix("run folder: "))
    assert [p.name for p in out.iterdir()] == [run_dir.name]
    # the finished run was caught up from its metrics.jsonl: every record, once
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points, _ = tensorboard_points(run_dir)
    assert points["test_accuracy"] == [(r["iteration"], pytest.approx(r["test_accuracy"], rel=1e-6))
                                       for r in records]
    # a third start logs nothing again
    assert main([*CLI, "--out", str(out), "--log", "tensorboard"]) == 0
    again, _ = tensorboard_points(run_dir)
    assert again["test_accuracy"] == points["test_accuracy"]


def test_a_sweep_groups_its_runs(tmp_path, monkeypatch):
    from training import sweep

    seen = []
    monkeypatch.setattr(sweep, "execute", lambda argv, *a, **k: (seen.append(list(argv)), ("done", "", {}, ""))[1])
    runs, path = sweep.run_grid("imp", {"seed": ["0", "1"]}, [*CLI[1:], "--out", str(tmp_path), "--log", "tensorboard"],
                                progress=False)
    assert len(seen) == 2
    for argv in seen:
        assert argv[argv.index("--log-group") + 1] == path.stem
        from training.__main__ import make_parser

        settings = loggers.settings_from_args(make_parser().parse_args(argv))
        assert settings.group == path.stem and settings.backends == ("tensorboard",)
    # without --log the command lines are left as they were
    seen.clear()
    sweep.run_grid("imp", {"seed": ["0"]}, [*CLI[1:], "--out", str(tmp_path)], progress=False)
    assert "--log-group" not in seen[0]


def test_a_failing_backend_warns_and_the_others_go_on(tmp_path, capsys):
    class Broken:
        def log_metrics(self, record, step):
            raise OSError("disk full")

        def close(self):
            pass

    class Kept:
        def __init__(self):
            self.steps = []

        def log_metrics(self, record, step):
            self.steps.append(step)

    kept = Kept()
    mirror = loggers.Mirror(tmp_path, {"tensorboard": Broken(), "mlflow": kept},
                            {"tensorboard": {"step": -1, "level": -1}, "mlflow": {"step": -1, "level": -1}})
    for it in (0, 10, 20):
        mirror.write({"level": 0, "iteration": it, "test_accuracy": 0.5, "note": "x", "bad": math.nan})
    err = capsys.readouterr().err
    assert err.count("warning: --log tensorboard stopped") == 1 and "disk full" in err
    assert kept.steps == [0, 10, 20]
    assert json.loads((tmp_path / "loggers.json").read_text())["mlflow"]["step"] == 20


def test_tensorboard_does_not_resend_a_run_reached_through_another_spelling_of_out(tmp_path, monkeypatch):
    """--out runs then --out /abs/runs name the same folder: the second start logs only the new level."""
    pytest.importorskip("tensorboard")
    from training.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main([*CLI, "--out", "tb", "--log", "tensorboard"]) == 0
    more = [*CLI, "--out", str(tmp_path / "tb"), "--log", "tensorboard"]
    more[more.index("--levels") + 1] = "2"
    assert main(more) == 0
    (run_dir,) = (tmp_path / "tb").glob("imp-*")
    points, _ = tensorboard_points(run_dir)
    steps = [s for s, _ in points["test_accuracy"]]
    assert steps == sorted(set(steps)), steps  # each step once, level 0 not sent twice


def test_an_unreachable_mlflow_server_is_one_line_at_once_and_unused_flags_warn(tmp_path, capsys):
    pytest.importorskip("mlflow")
    import time

    from training.__main__ import main

    start = time.perf_counter()
    assert main([*CLI, "--out", str(tmp_path), "--log", "mlflow", "--mlflow-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 30 and err.startswith("error: --mlflow-uri http://127.0.0.1:9: no MLflow")
    assert err.count("\n") == 1 and not list(tmp_path.glob("imp-*/level_0/final.pt"))
    assert main([*CLI, "--out", str(tmp_path), "--log-project", "x"]) == 0
    assert "warning: --log-project has no effect without --log" in capsys.readouterr().err
