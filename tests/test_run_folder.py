"""Run folders: one writer at a time, no silent change of meaning on resume, provenance, output
folders checked before any work, and the files read the way the README says (pandas)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import tiny_config
from training.errors import UserError
from training.algorithms.imp import run_imp

LEVELS, EPOCHS = 2, 3


def _argv(data_dir, out):
    return [sys.executable, "-m", "training", "imp", "--data-dir", data_dir, "--model", "mnist1d_mlp",
            "--mnist1d-samples", "500", "--batch-size", "40", "--train-for", f"{EPOCHS}ep", "--levels",
            str(LEVELS), "--no-progress", "--threads", "1", "--out", str(out)]


def _wait_for_lock(proc, out, timeout=120):
    """The run folder once ``proc`` holds its lock (its PID is in RUN/.lock)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for lock in out.glob("imp-*/.lock"):
            if lock.read_text().strip() == str(proc.pid):
                return lock.parent
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"the first process never held a lock (exit status {proc.poll()})")


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_second_process_on_a_run_folder_fails_at_once(data_dir, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(_argv(data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = _wait_for_lock(first, out)
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, deterministically
    try:
        second = subprocess.run(_argv(data_dir, out), capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and second.stderr.startswith("error: "), second.stderr
    assert str(folder) in second.stderr and f"PID {first.pid}" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    rows = _rows(folder)
    # each level evaluates at its start and after every epoch, once
    assert len(rows) == LEVELS * (EPOCHS + 1)
    keys = [(r["level"], r["iteration"]) for r in rows]
    assert keys == sorted(set(keys))


def test_lock_of_a_killed_process_does_not_block_a_rerun(data_dir, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(_argv(data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = _wait_for_lock(holder, out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (folder / ".lock").read_text().strip() == str(holder.pid)  # the stale file is still there
    rerun = subprocess.run(_argv(data_dir, out), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert len(_rows(folder)) == LEVELS * (EPOCHS + 1)


def test_lock_is_shared_within_a_process_and_released_on_close(data_dir, tmp_path):
    from training.engine.runs import _held

    a = run_imp(tiny_config(train_for="1ep"), levels=1, out=tmp_path, progress=False)
    b = run_imp(tiny_config(train_for="1ep"), levels=1, out=tmp_path, progress=False)  # a still exists
    key = str((a.dir / ".lock").resolve())
    assert b.dir == a.dir and _held[key][1] == 2
    a.close()
    a.close()  # a second close changes nothing
    assert _held[key][1] == 1
    b.close()
    assert key not in _held
    probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(a.dir / ".lock")],
                           capture_output=True, timeout=60)
    assert probe.returncode == 0, probe.stderr  # another process can take it now


# --- the configuration and provenance of a run folder -----------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    return run_imp(tiny_config(train_for="2ep"), levels=2, out=tmp_path_factory.mktemp("finished"), progress=False)


def _copy(finished, tmp_path):
    shutil.copytree(finished.dir, tmp_path / finished.dir.name)
    folder = tmp_path / finished.dir.name
    (folder / ".lock").unlink()
    return folder


def test_changed_default_refuses_to_resume(finished, tmp_path, capsys):
    folder = _copy(finished, tmp_path)
    stored = json.loads((folder / "config.json").read_text())
    stored["config"]["training"]["momentum"] = 0.8  # as if the default had been 0.8 when it was made
    stored["config"]["pruning"]["scope"] = "layerwise"
    (folder / "config.json").write_text(json.dumps(stored))
    before = (folder / "config.json").read_text()
    with pytest.raises(UserError) as info:
        run_imp(tiny_config(train_for="2ep"), levels=3, out=tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    assert "training.momentum stored 0.8, now 0.9" in message
    assert "pruning.scope stored 'layerwise', now 'global'" in message
    assert message.count(" stored ") == 2  # only the fields that differ
    assert "another --out" in message
    assert (folder / "config.json").read_text() == before  # nothing rewritten
    assert not (folder / "level_2").exists()  # nothing trained


def test_untouched_folder_resumes_without_rewriting_config(finished, tmp_path, capsys):
    folder = _copy(finished, tmp_path)
    before = (folder / "config.json").stat()
    run = run_imp(tiny_config(train_for="2ep"), levels=2, out=tmp_path, progress=False)
    after = (folder / "config.json").stat()
    assert run.dir == folder and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "warning" not in capsys.readouterr().err


def test_every_run_records_its_software(finished):
    import numpy
    import platform

    (record,) = json.loads((finished.dir / "config.json").read_text())["provenance"]
    assert record["torch"] == str(torch.__version__) and record["numpy"] == numpy.__version__
    assert record["python"] == platform.python_version()
    assert record["toolkit"] is None or record["toolkit"][0].isdigit()
    assert record["git_commit"] is None or len(record["git_commit"]) == 40


def test_git_commit_is_read_from_the_repository_files(tmp_path):
    from training.engine.provenance import git_commit

    assert git_commit(tmp_path) is None  # not a repository
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert git_commit(tmp_path) is None  # a branch without commits
    (git / "packed-refs").write_text("# pack-refs with: peeled\n" + "a" * 40 + " refs/heads/main\n")
    assert git_commit(tmp_path) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert git_commit(tmp_path) == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")  # detached
    assert git_commit(tmp_path) == "c" * 40


def test_old_folder_without_provenance_resumes_and_version_change_is_recorded(finished, tmp_path, capsys):
    folder = _copy(finished, tmp_path)
    stored = json.loads((folder / "config.json").read_text())
    del stored["provenance"]  # written before versions were recorded
    (folder / "config.json").write_text(json.dumps(stored))
    run_imp(tiny_config(train_for="2ep"), levels=2, out=tmp_path, progress=False)
    history = json.loads((folder / "config.json").read_text())["provenance"]
    assert len(history) == 1 and history[0]["torch"] == str(torch.__version__)
    assert "warning" not in capsys.readouterr().err

    history[0]["torch"] = "1.0.0"  # as if made with another torch
    stored = json.loads((folder / "config.json").read_text())
    stored["provenance"] = history
    (folder / "config.json").write_text(json.dumps(stored))
    run_imp(tiny_config(train_for="2ep"), levels=2, out=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert "warning" in err and f"torch 1.0.0 -> {torch.__version__}" in err and err.count("\n") == 1
    history = json.loads((folder / "config.json").read_text())["provenance"]
    assert [h["torch"] for h in history] == ["1.0.0", str(torch.__version__)]


# --- output folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["names a file", "under a file", "under /proc"])
def test_unwritable_output_folder_fails_before_any_work(data_dir, tmp_path, where, monkeypatch):
    import training.engine.runs

    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"names a file": blocker, "under a file": blocker / "runs", "under /proc": "/proc/nope/runs"}[where]

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the output folder was checked")

    monkeypatch.setattr(training.engine.runs, "load_dataset", no_data)
    with pytest.raises(UserError) as info:
        run_imp(tiny_config(), levels=1, out=out, progress=False)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"--out {out}")


def test_unwritable_output_folder_through_the_command_line(data_dir, tmp_path, capsys):
    from training.__main__ import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["imp", "--out", str(blocker / "runs"), "--no-progress", "--model", "mnist1d_mlp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and err.count("\n") == 1


# --- reading the files with pandas, as the README says -----------------------------------------


def test_summary_and_metrics_read_with_pandas(finished):
    import pandas as pd  # a dependency: the README tells users to read results with it

    summary = pd.read_csv(finished.dir / "summary.csv")
    assert list(summary["level"]) == [0, 1]
    assert summary["density"].iloc[1] == pytest.approx(0.8, abs=1e-3)
    for kind in ("mask", "init", "rewind", "final"):
        paths = summary[f"{kind}_path"]
        assert list(paths) == [f"level_{level}/{kind}.pt" for level in (0, 1)]
        assert all((finished.dir / p).is_file() for p in paths)
    assert summary["step_paths"].isna().all()  # an IMP run saves no extra steps
    as_json = json.loads((finished.dir / "summary.json").read_text())["levels"]
    assert list(summary["final_path"]) == [e["checkpoints"]["final"] for e in as_json]

    metrics = pd.read_json(finished.dir / "metrics.jsonl", lines=True)
    assert len(metrics) == len((finished.dir / "metrics.jsonl").read_text().splitlines()) == 2 * 3
    assert set(metrics["level"]) == {0, 1} and metrics["test_accuracy"].between(0, 1).all()
    assert metrics["train_loss"].isna().sum() == 2  # the evaluation at each level's start has no training loss


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_a_folder_made_before_the_package_layout_changed_resumes(data_dir, tmp_path, capsys):
    """tests/fixtures/imp-41f017f4e4a2 was written by commit c18a863, before training/ moved into
    algorithms/, sparsity/ and engine/: `imp --model linear --train-for 2ep --levels 1`. The same
    command with --levels 2 today must find that folder (same hash), keep level 0 byte for byte, and
    train level 1 exactly as a fresh run of today's code does."""
    from training.__main__ import main

    old = shutil.copytree(os.path.join(FIXTURES, "imp-41f017f4e4a2"), tmp_path / "old" / "imp-41f017f4e4a2")
    level0 = {p.name: p.read_bytes() for p in (old / "level_0").iterdir()}
    argv = ["imp", "--model", "linear", "--train-for", "2ep", "--levels", "2", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "old")]) in (None, 0)
    assert "was made before the CPU thread count was recorded" in capsys.readouterr().err  # it had torch's count
    assert {p.name: p.read_bytes() for p in (old / "level_0").iterdir()} == level0
    assert main(argv + ["--out", str(tmp_path / "new")]) in (None, 0)
    fresh = tmp_path / "new" / "imp-41f017f4e4a2"
    a = torch.load(old / "level_1" / "final.pt", weights_only=True)
    b = torch.load(fresh / "level_1" / "final.pt", weights_only=True)
    for part in ("state_dict", "mask"):
        assert a[part] and a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert 0 < sum(int(m.sum()) for m in a["mask"].values()) < sum(m.numel() for m in a["mask"].values())


def test_a_level_at_chance_stops_the_run_unless_allowed(data_dir, tmp_path, capsys):
    """At a learning rate that kills training, level 0 ends at chance: one line naming the level and the
    learning rate, exit status 1, the level marked in summary.json, and no level pruned from it; a rerun
    stops again; --allow-diverged goes on (still marked). The last level of a run never stops it."""
    from training.__main__ import main
    from training.engine.runs import allowing_diverged

    with allowing_diverged(False):  # the default outside the test suite
        _a_level_at_chance(main, tmp_path, capsys)


def _a_level_at_chance(main, tmp_path, capsys):
    argv = ["imp", "--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "2ep", "--batch-size", "40",
            "--lr", "3", "--levels", "3", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: level 0 of imp-") and "ended at chance" in err
    assert "lr 3)" in err and "--allow-diverged" in err
    (folder,) = tmp_path.glob("imp-*")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["levels"][0]["diverged"] and not (folder / "level_1" / "final.pt").exists()
    assert main(argv) == 1 and not (folder / "level_1" / "final.pt").exists()
    capsys.readouterr()
    assert main(argv + ["--allow-diverged"]) == 0
    summary = json.loads((folder / "summary.json").read_text())
    assert [e["level"] for e in summary["levels"]] == [0, 1, 2] and summary["levels"][0]["diverged"]
    capsys.readouterr()
    assert main(["runs", str(tmp_path)]) == 0
    assert "diverged" in capsys.readouterr().out


def test_healthy_runs_are_not_marked_and_report_both_densities_and_layer_counts(finished):
    summary = json.loads((finished.dir / "summary.json").read_text())
    for entry in summary["levels"]:
        assert "diverged" not in entry
        assert entry["density_trained"] == entry["density"] == pytest.approx(entry["density_nonzero"], abs=0.01)
        assert sum(c["kept"] for c in entry["layers"].values()) == entry["weights_kept"]


def test_what_counts_as_a_level_at_chance():
    """Both accuracies at chance, or a loss never below ln(C) with test accuracy near chance; a high
    mean loss alone (one long evaluation interval) with a network that learned is not at chance."""
    from types import SimpleNamespace

    from training.engine.runs import diverged_reason

    data = SimpleNamespace(test=SimpleNamespace(y=torch.arange(100) % 10), num_classes=10)
    assert diverged_reason({"test_accuracy": 0.45, "train_accuracy": 0.5}, [{"train_loss": 2.4}], data) is None
    assert diverged_reason({"test_accuracy": 0.12, "train_accuracy": 0.6}, [{"train_loss": 1.1}], data) is None
    assert "uniform" in diverged_reason({"test_accuracy": 0.12, "train_accuracy": 0.6}, [{"train_loss": 2.4}], data)
    assert "chance 10.0 %" in diverged_reason({"test_accuracy": 0.1, "train_accuracy": 0.105}, [], data)


def test_a_cs_ticket_at_chance_stops_nothing_but_a_dead_dense_level_stops_the_rounds(data_dir, tmp_path, monkeypatch):
    """CS tickets build on level 0's W^k, not on each other: a ticket at chance is marked, not a stop."""
    import training.engine.runs as runs_module
    from training.algorithms.continuous_sparsification import CSHparams, run_cs
    from training.engine.runs import allowing_diverged
    from training.errors import RunStopped

    config = tiny_config(train_for="2ep")
    config.pruning = None
    cs = CSHparams(penalty=1e-3, mask_init=0.02, mask_lr=0.01)
    monkeypatch.setattr(runs_module, "diverged_reason", lambda results, records, data: "forced" if records and
                        records[-1]["level"] == 1 else None)
    with allowing_diverged(False):
        run = run_cs(config, cs, rounds=2, out=tmp_path / "a", progress=False)
        assert run.level_done(2)
        summary = json.loads((run.dir / "summary.json").read_text())
        assert summary["levels"][1]["diverged"] and "diverged" not in summary["levels"][2]
        monkeypatch.setattr(runs_module, "diverged_reason", lambda results, records, data: "forced" if records and
                            records[-1]["level"] == 0 else None)
        with pytest.raises(RunStopped):
            run_cs(config, cs, rounds=2, out=tmp_path / "b", progress=False)
