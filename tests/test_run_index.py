"""``python -m training runs``: the index of the run folders under a root (issue #17, "Finding runs").

Tiny runs are made once (an IMP run with a control branch, a dense run); every test lists them or a
copy of them, the way a user would, through ``training.__main__.main``."""
import io
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import tiny_config
from training.__main__ import main


@pytest.fixture(scope="module")
def root(tmp_path_factory, data_dir):
    """ROOT with a finished 2-level IMP run (and a reinit control of its level 1) and a dense run
    at lr 0.1; every lock released."""
    from training.algorithms.controls import run_control
    from training.algorithms.imp import run_imp, run_train

    out = tmp_path_factory.mktemp("runs")
    imp = run_imp(tiny_config(train_for="2ep"), levels=2, out=out, progress=False)
    imp.close()
    run_control(imp.dir, "reinit", 1, progress=False).close()
    run_train(tiny_config(train_for="1ep", lr=0.1), out=out, progress=False).close()
    return out


def _list(capsys, *argv) -> tuple[int, str, str]:
    code = main(["runs", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys, *argv) -> list[dict]:
    code, out, err = _list(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _summary(folder) -> list[dict]:
    return json.loads((Path(folder) / "summary.json").read_text())["levels"]


def _imp(root) -> Path:
    (folder,) = Path(root).glob("imp-*")
    return folder


def test_lists_each_run_with_its_settings_levels_status_and_last_accuracy(root, capsys, monkeypatch):
    import training.engine.checkpoint

    def no_checkpoints(*args, **kwargs):
        raise AssertionError("the index read a checkpoint")

    monkeypatch.setattr(torch, "load", no_checkpoints)
    monkeypatch.setattr(training.engine.checkpoint, "safe_load", no_checkpoints)
    code, out, err = _list(capsys, root)
    assert code == 0 and err == ""
    imp = _imp(root)
    (train,) = Path(root).glob("train-*")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["folder", "command", "levels", "status"]
    imp_line = next(line for line in lines if line.startswith(imp.name))
    train_line = next(line for line in lines if line.startswith(train.name))
    last = _summary(imp)[-1]
    # levels done / asked for ("?" until run_imp records the levels it asks for)
    assert " imp " in imp_line and re.search(r" 2/[?2] ", imp_line) and " complete " in imp_line
    assert f"{100 * last['test_accuracy']:.2f}%" in imp_line and f"{100 * last['density']:.2f}%" in imp_line
    assert "model=mnist1d_mlp" in imp_line and "train_for=2ep" in imp_line and "lr=" not in imp_line
    assert " train " in train_line and "lr=0.1" in train_line and re.search(r" 1/[?1] ", train_line)
    assert "100.00%" in train_line

    rows = {Path(r["folder"]).name: r for r in _json(capsys, root)}
    assert rows[imp.name]["test_accuracy"] == last["test_accuracy"] and rows[imp.name]["levels_done"] == 2
    assert rows[imp.name]["status"] == "complete" and rows[imp.name]["levels_planned"] in (None, 2)
    assert rows[train.name]["lr"] == 0.1 and rows[train.name]["seed"] == 0


def test_branches_are_listed_under_their_parent(root, capsys):
    imp = _imp(root)
    (branch,) = (imp / "branches").iterdir()
    _, out, _ = _list(capsys, root)
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(imp.name))
    assert lines[at + 1].startswith(f"  {imp.name}/branches/{branch.name}")  # right below, indented
    assert "reinit (branch)" in lines[at + 1] and "source=" in lines[at + 1]
    rows = {Path(r["folder"]).name: r for r in _json(capsys, root)}
    assert rows[branch.name]["parent"] == str(imp) and rows[branch.name]["command"] == "reinit"
    assert rows[branch.name]["test_accuracy"] == _summary(branch)[-1]["test_accuracy"]
    assert rows[imp.name]["parent"] is None


def test_a_run_whose_lock_is_held_is_running_with_the_holders_pid(root, capsys):
    from training.engine.runs import FolderLock

    lock = FolderLock(_imp(root))
    try:
        rows = {Path(r["folder"]).name: r for r in _json(capsys, root)}
        assert rows[_imp(root).name]["status"] == "running" and rows[_imp(root).name]["pid"] == str(os.getpid())
        _, out, _ = _list(capsys, root)
        assert f"running (PID {os.getpid()})" in out
    finally:
        lock.release()
    rows = {Path(r["folder"]).name: r for r in _json(capsys, root)}
    assert rows[_imp(root).name]["status"] == "complete"  # listing neither took nor kept the lock
    FolderLock(_imp(root)).release()


def test_stopped_runs_and_levels_asked_for(root, tmp_path, capsys):
    from training.algorithms.imp import run_imp
    from training.engine.runs import Run, resolve_device

    calls = []

    def kill_in_level_2(epoch: int) -> None:  # called after the first of each level's 2 epochs
        calls.append(epoch)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_imp(tiny_config(train_for="2ep"), levels=3, out=tmp_path, progress=False, on_epoch_end=kill_in_level_2)
    (row,) = _json(capsys, tmp_path)
    assert row["status"] == "stopped" and row["levels_done"] == 2 and "level 2 was started" in row["reason"]

    # a start that records the levels it asks for: 2 of 3 done is stopped, 2 of 2 complete
    shutil.rmtree(Path(row["folder"]) / "level_2")
    Run(tiny_config(train_for="2ep"), "imp", tmp_path, resolve_device("cpu"), levels=3).close()
    (row,) = _json(capsys, tmp_path)
    assert (row["status"], row["levels_done"], row["levels_planned"]) == ("stopped", 2, 3)
    _, out, _ = _list(capsys, tmp_path)
    assert " 2/3 " in out and " stopped " in out
    Run(tiny_config(train_for="2ep"), "imp", tmp_path, resolve_device("cpu"), levels=2).close()
    (row,) = _json(capsys, tmp_path)
    assert (row["status"], row["levels_planned"]) == ("complete", 2)
    history = json.loads((Path(row["folder"]) / "config.json").read_text())["provenance"]
    assert [h.get("levels") for h in history][-2:] == [3, 2]


def test_where_filters_by_config_fields_command_and_status(root, capsys):
    def names(*where) -> set[str]:
        return {Path(r["folder"]).name.split("-")[0] for r in _json(capsys, root, *where)}

    assert names() == {"imp", "reinit", "train"}
    assert names("--where", "lr=0.1") == {"train"}
    assert names("--where", "training.lr=0.05") == {"imp", "reinit"}
    assert names("--where", "seed=0") == {"imp", "reinit", "train"}  # a field at its default matches too
    assert names("--where", "command=imp", "--where", "status=complete") == {"imp"}
    assert names("--where", "command=imp", "--where", "command=train") == {"imp", "train"}
    assert names("--where", "status=running") == set()
    code, out, err = _list(capsys, root, "--where", "model=resnet20")
    assert code == 0 and out.startswith("no runs under") and "match --where model=resnet20" in out
    code, out, err = _list(capsys, root, "--where", "lrate=0.1")
    assert code == 2 and out == "" and err.startswith("error: --where lrate") and err.count("\n") == 1
    code, out, err = _list(capsys, root, "--where", "lr")
    assert code == 2 and err.startswith("error: --where takes FIELD=VALUE") and err.count("\n") == 1


def test_csv_and_json_read_with_pandas_per_run_and_per_level(root, capsys):
    code, out, err = _list(capsys, root, "--csv")
    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    assert len(table) == 3 and {"folder", "command", "status", "levels_done", "test_accuracy", "density", "lr"} <= set(table)
    imp = _imp(root)
    row = table[table.folder == str(imp)].iloc[0]
    assert row.test_accuracy == _summary(imp)[-1]["test_accuracy"] and row.levels_done == 2

    code, out, err = _list(capsys, root, "--csv", "--levels")
    levels = pd.read_csv(io.StringIO(out))
    assert len(levels) == 2 + 1 + 1  # the IMP run's two levels, the branch's and the dense run's one
    mine = levels[levels.folder == str(imp)].sort_values("level")
    assert list(mine.test_accuracy) == [e["test_accuracy"] for e in _summary(imp)]
    assert list(mine.density) == [e["density"] for e in _summary(imp)]

    records = _json(capsys, root, "--levels")
    assert len(records) == 4 and pd.DataFrame(records).shape[0] == 4
    code, out, _ = _list(capsys, root, "--levels")
    assert "level 1  test acc" in out


def test_damaged_and_diverged_folders_are_listed_not_raised(root, tmp_path, capsys):
    imp = _imp(root)
    for name in ("imp-aaaaaaaaaaaa", "imp-bbbbbbbbbbbb", "imp-cccccccccccc"):
        (tmp_path / name).mkdir()
        for file in ("config.json", "summary.json"):
            shutil.copy(imp / file, tmp_path / name / file)
    (tmp_path / "imp-aaaaaaaaaaaa" / "config.json").write_text('{"config": ')  # truncated
    (tmp_path / "imp-bbbbbbbbbbbb" / "summary.json").write_text('{"levels": 3}')
    summary = json.loads((imp / "summary.json").read_text())
    summary["levels"][1]["diverged"] = True
    (tmp_path / "imp-cccccccccccc" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "imp-dddddddddddd").mkdir()  # no config.json at all

    code, out, err = _list(capsys, tmp_path)
    assert code == 0 and err == "" and "Traceback" not in out
    rows = {r["folder"].rsplit("-", 1)[1][0]: r for r in _json(capsys, tmp_path)}
    assert rows["a"]["status"] == "damaged" and "config.json is not valid JSON" in rows["a"]["reason"]
    assert rows["b"]["status"] == "damaged" and "summary.json" in rows["b"]["reason"]
    assert rows["c"]["status"] == "diverged" and rows["c"]["reason"] == "level 1"
    assert rows["d"]["status"] == "damaged" and rows["d"]["reason"] == "no config.json"
    assert "damaged: config.json is not valid JSON" in out


def test_missing_root_is_one_error_line_and_an_empty_one_says_so(tmp_path, capsys):
    code, out, err = _list(capsys, tmp_path / "nope")
    assert code == 2 and out == "" and err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
    (tmp_path / "file").write_text("")
    code, out, err = _list(capsys, tmp_path / "file")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, out, err = _list(capsys, tmp_path / "empty")
    assert code == 0 and out == f"no runs under {tmp_path / 'empty'}\n" and err == ""
    code, out, err = _list(capsys, tmp_path / "empty", "--csv")
    assert code == 0 and err.startswith("no runs under") and out.startswith("folder,")


def test_every_command_records_the_levels_it_plans(root, capsys):
    """IMP, dense training and controls say how many levels they plan, so the index shows done of
    planned instead of '?'."""
    rows = _json(capsys, root)
    planned = {(r.get("parent") is not None, r["command"]): r["levels_planned"] for r in rows}
    assert planned[(False, "imp")] == 2 and planned[(False, "train")] == 1 and planned[(True, "reinit")] == 1
    # every planned level is done; a tiny run that learned nothing is listed as diverged, not complete
    assert all(r["levels_done"] == r["levels_planned"] and r["status"] in ("complete", "diverged") for r in rows)
