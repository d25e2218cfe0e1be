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


def _rows(capsys, root) -> dict:
    return {Path(r["folder"]).name: r for r in _json(capsys, root)}


def _line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(name))


def test_execution_settings_in_the_identity_are_shown_and_filtered(tmp_path, capsys, data_dir):
    """A --threads 2 run is not '(defaults)'; precision, channels-last, compile and the world size
    are told apart and taken by --where; a GPU run's CPU threads, not in its identity, are not shown."""
    from training.algorithms.imp import run_train
    from training.hparams import ExecutionHparams

    config = tiny_config(train_for="1ep")
    config.execution = ExecutionHparams(threads=2)
    threads = run_train(config, out=tmp_path, progress=False)
    threads.close()
    made = {"bf16": {"precision": "bf16"}, "fp16": {"precision": "fp16", "channels_last": True},
            "compiled": {"compile": True, "world_size": 2}, "gpu": {"device": "cuda", "threads": 4}}
    for i, (name, settings) in enumerate(made.items()):  # folders as those runs write them
        folder = tmp_path / f"train-{i:012x}"
        folder.mkdir()
        stored = json.loads((threads.dir / "config.json").read_text())
        stored["config"]["execution"] = {**ExecutionHparams().__dict__, **settings}
        (folder / "config.json").write_text(json.dumps(stored))
        shutil.copy(threads.dir / "summary.json", folder / "summary.json")
    _, out, _ = _list(capsys, tmp_path)
    assert "threads=2" in _line(out, threads.dir.name) and "(defaults)" not in _line(out, threads.dir.name)
    assert "precision=bf16" in _line(out, "train-000000000000")
    assert re.search(r"precision=fp16 channels_last=True\s*$", _line(out, "train-000000000001"))
    assert "compile=True world_size=2" in _line(out, "train-000000000002")
    gpu = _line(out, "train-000000000003")
    assert "device=cuda" in gpu and "threads" not in gpu

    def names(*where) -> set[str]:
        return {Path(r["folder"]).name for r in _json(capsys, tmp_path, *where)}

    assert names("--where", "threads=2") == {threads.dir.name}
    assert names("--where", "precision=bf16") == {"train-000000000000"}
    assert names("--where", "precision=fp32") == {threads.dir.name, "train-000000000002", "train-000000000003"}
    assert names("--where", "channels_last=true") == {"train-000000000001"}
    assert names("--where", "world_size=2", "--where", "compile=True") == {"train-000000000002"}
    assert names("--where", "device=cuda") == {"train-000000000003"}
    assert _rows(capsys, tmp_path)[threads.dir.name]["threads"] == 2  # a CSV/JSON column too


def test_cs_iss_and_edge_popup_settings_are_read_from_config_json(tmp_path, capsys, data_dir):
    """Their own settings show as name=value (not cs()/iss(...) tokens), --where takes them, and the
    levels planned are the rounds + 1."""
    from training.algorithms.continuous_sparsification import run_cs
    from training.algorithms.edge_popup import EdgePopupHparams, run_edge_popup
    from training.algorithms.stochastic_sparsification import ISSHparams, run_iss

    def config():
        c = tiny_config(train_for="1ep")
        c.pruning = None
        return c

    cs = run_cs(config(), rounds=1, out=tmp_path, progress=False)
    cs.close()
    iss = run_iss(config(), ISSHparams(mask_init=0.0, freeze_weights=True), rounds=1, out=tmp_path, progress=False)
    iss.close()
    popup = run_edge_popup(config(), EdgePopupHparams(keep=0.3), out=tmp_path, progress=False)
    popup.close()
    _, out, _ = _list(capsys, tmp_path)
    cs_line, iss_line, popup_line = (_line(out, r.dir.name) for r in (cs, iss, popup))
    assert "cs(" not in cs_line and "mask_init" not in cs_line and re.search(r" 2/2 ", cs_line)
    assert "iss(" not in iss_line and "mask_init=0 " in iss_line and "freeze_weights=True" in iss_line
    assert re.search(r" 2/2 ", iss_line)
    assert popup_line.count("keep=0.3") == 1

    def names(*where) -> set[str]:
        return {Path(r["folder"]).name.split("-")[0] for r in _json(capsys, tmp_path, *where)}

    assert names("--where", "mask_init=0") == {"iss"}
    assert names("--where", "freeze_weights=True") == {"iss"}
    assert names("--where", "freeze_weights=false") == {"cs"}  # edge-popup has no such setting
    assert names("--where", "mask_init=0.05") == {"cs"}  # CS's default s_0
    assert names("--where", "keep=0.3") == {"edge"} and names("--where", "init=signed_constant") == {"edge"}
    code, _, err = _list(capsys, tmp_path / cs.dir.name, "--where", "keep=0.3")  # known with no edge-popup run
    assert code == 0 and "no such field" not in err
    rows = _rows(capsys, tmp_path)
    assert rows[cs.dir.name]["levels_planned"] == 2 and rows[iss.dir.name]["mask_init"] == 0


def test_a_compress_folder_has_a_row_of_its_own(root, tmp_path, capsys):
    """Not 'damaged: no config.json': complete with its compression.json (the Huffman-coded
    network's accuracy and density), stopped without one."""
    assert main(["compress", str(_imp(root)), "--out", str(tmp_path), "--centroid-epochs", "0",
                 "--no-progress"]) == 0
    (done,) = tmp_path.glob("compress-*")
    report = json.loads((done / "compression.json").read_text())
    shutil.copytree(done, tmp_path / "compress-000000000000")
    (tmp_path / "compress-000000000000" / "compression.json").unlink()  # interrupted
    capsys.readouterr()
    rows = _rows(capsys, tmp_path)
    row = rows[done.name]
    assert (row["command"], row["status"]) == ("compress", "complete")
    assert row["test_accuracy"] == report["stages"][-1]["test_accuracy"]
    assert row["density"] == report["layers"][-1]["fraction_kept"] < 1
    assert rows["compress-000000000000"]["status"] == "stopped"
    _, out, _ = _list(capsys, tmp_path)
    line = _line(out, done.name)
    assert " compress " in line and " complete " in line and "centroid_epochs=0" in line and "source=" in line
    assert "damaged" not in out and f"{100 * row['test_accuracy']:.2f}%" in line
    assert {Path(r["folder"]).name for r in _json(capsys, tmp_path, "--where", "command=compress",
                                                   "--where", "status=complete")} == {done.name}


def test_a_finished_analysis_branch_without_summary_json_is_complete(root, tmp_path, capsys):
    """A branch of train_branch (analysis.connectivity --instability, analysis.supermask --train)
    writes summary.json, so the index shows its accuracy; one made before that (no summary.json)
    still counts its finished level (not 'stopped 0/1')."""
    from training.engine.branches import train_branch

    run = tmp_path / _imp(root).name
    shutil.copytree(_imp(root), run, ignore=shutil.ignore_patterns("branches", ".lock"))
    final = train_branch(run / "level_1" / "rewind.pt", "instability", seed=1, progress=False)
    summary = final.parent.parent / "summary.json"
    assert _rows(capsys, tmp_path)[final.parent.parent.name]["test_accuracy"] is not None
    summary.unlink()
    rows = _rows(capsys, tmp_path)
    branch = rows[final.parent.parent.name]
    assert (branch["status"], branch["levels_done"], branch["levels_planned"]) == ("complete", 1, 1)
    assert branch["parent"] == str(run)
    _, out, _ = _list(capsys, tmp_path)
    assert re.search(r"instability \(branch\)\s+1/1\s+complete", out)


def test_a_nan_stop_is_diverged_with_its_reason(tmp_path, capsys, data_dir):
    argv = ["imp", "--out", str(tmp_path), "--no-progress", "--lr", "1e12", "--momentum", "0", "--model",
            "mnist1d_mlp", "--mnist1d-samples", "500", "--levels", "2"]
    assert main(argv) != 0
    capsys.readouterr()
    (row,) = _json(capsys, tmp_path)
    assert row["status"] == "diverged" and "loss became" in row["reason"] and "level 0" in row["reason"]
    _, out, _ = _list(capsys, tmp_path)
    assert re.search(r" 0/2 +diverged: level 0: loss became \S+ at iteration \d+", out)
    assert "Lower --lr" not in out  # the table keeps the reason to one clause


def test_a_later_start_asking_for_fewer_levels_than_done_is_complete(root, tmp_path, capsys):
    """A sweep's --levels 3 on the demo's folder (5 done) showed 5/3: planned is at least done."""
    from training.engine.runs import Run, resolve_device

    run = tmp_path / _imp(root).name
    shutil.copytree(_imp(root), run, ignore=shutil.ignore_patterns("branches", ".lock"))
    Run(tiny_config(train_for="2ep"), "imp", tmp_path, resolve_device("cpu"), levels=1).close()
    history = json.loads((run / "config.json").read_text())["provenance"]
    assert history[-1]["levels"] == 1  # the latest start asked for 1 level
    (row,) = _json(capsys, tmp_path)
    assert (row["levels_done"], row["levels_planned"], row["status"]) == (2, 2, "complete")
    _, out, _ = _list(capsys, tmp_path)
    assert " 2/2 " in out
