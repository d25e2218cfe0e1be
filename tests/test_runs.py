"""IMP runs: rewinding, nesting across levels, summaries, and bit-identical resume."""
import json

import pytest
import torch

from tests.conftest import tiny_config
from training.engine.checkpoint import read_checkpoint
from training.algorithms.imp import run_imp, run_train
from training.sparsity.masks import is_nested
from training.errors import UserError
from training.engine.runs import load_mask


def test_imp_levels_rewind_and_nest(data_dir, tmp_path):
    cfg = tiny_config()
    cfg.pruning.rewind = "5it"
    run = run_imp(cfg, levels=3, out=tmp_path, progress=False)
    summary = json.loads((run.dir / "summary.json").read_text())
    assert [e["level"] for e in summary["levels"]] == [0, 1, 2]
    for e in summary["levels"]:
        assert e["density"] == pytest.approx(e["weights_kept"] / e["weights_prunable"])
        for rel in e["checkpoints"].values():
            assert (run.dir / rel).exists()
    masks = [load_mask(run.dir / f"level_{l}" / "mask.pt") for l in range(3)]
    assert is_nested(masks[1], masks[0]) and is_nested(masks[2], masks[1])
    kept = [sum(int(m.sum()) for m in mask.values()) for mask in masks]
    assert kept[1] == kept[0] - int(0.2 * kept[0] + 0.5) and kept[2] == kept[1] - int(0.2 * kept[1] + 0.5)

    w_k = read_checkpoint(run.dir / "level_0" / "rewind.pt")
    assert w_k["step"]["iteration"] == 5
    for level in (1, 2):
        rewound = read_checkpoint(run.dir / f"level_{level}" / "rewind.pt")
        assert rewound["step"]["iteration"] == 5
        for name, value in w_k["state_dict"].items():
            m = masks[level].get(name)
            expected = value * m if m is not None else value
            assert torch.equal(rewound["state_dict"][name], expected), name
        final = read_checkpoint(run.dir / f"level_{level}" / "final.pt")
        for name, m in masks[level].items():
            assert bool((final["state_dict"][name][~m] == 0).all())
    assert (run.dir / "summary.csv").read_text().startswith("level,density")
    records = [json.loads(l) for l in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["level"] for r in records} == {0, 1, 2} and all("test_accuracy" in r for r in records)


class Killed(Exception):
    pass


def _all_files(run_dir):
    out = {}
    for level_dir in sorted(run_dir.glob("level_*")):
        out[level_dir.name + "/mask"] = load_mask(level_dir / "mask.pt")
        for kind in ("init", "rewind", "final"):
            out[f"{level_dir.name}/{kind}"] = read_checkpoint(level_dir / f"{kind}.pt")["state_dict"]
    return out


# Epoch-boundary callbacks: level 0 has 3 (iterations 10, 20, 30 of 40); levels 1 and 2 start at
# the rewind point (iteration 10) and have 2 each. Killing at call 2 stops level 0 midway, at 5
# level 1 midway, at 7 level 2 midway (after level 1 finished).
@pytest.mark.parametrize("kill_at", [2, 5, 7])
def test_killed_run_resumes_bit_identically(data_dir, tmp_path, kill_at):
    cfg = tiny_config(train_for="4ep")
    cfg.pruning.rewind = "1ep"
    reference = run_imp(cfg, levels=3, out=tmp_path / "a", progress=False)

    epochs_seen = []

    def kill_in_level_1(epoch):
        epochs_seen.append(epoch)
        if len(epochs_seen) == kill_at:
            raise Killed

    with pytest.raises(Killed):
        run_imp(_with_rewind(tiny_config(train_for="4ep"), "1ep"), levels=3, out=tmp_path / "b", progress=False,
                on_epoch_end=kill_in_level_1)
    killed_level = {2: 0, 5: 1, 7: 2}[kill_at]
    level_dir = tmp_path / "b" / reference.dir.name / f"level_{killed_level}"
    assert (level_dir / "state.pt").exists() and not (level_dir / "final.pt").exists()
    resumed = run_imp(_with_rewind(tiny_config(train_for="4ep"), "1ep"), levels=3, out=tmp_path / "b",
                      progress=False)
    assert resumed.dir.name == reference.dir.name
    a, b = _all_files(reference.dir), _all_files(resumed.dir)
    assert a.keys() == b.keys()
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key} {name}"
    strip = lambda path: [{k: v for k, v in json.loads(l).items() if k != "seconds"}  # noqa: E731
                          for l in path.read_text().splitlines()]
    assert strip(reference.dir / "metrics.jsonl") == strip(resumed.dir / "metrics.jsonl")


def _with_rewind(cfg, rewind):
    cfg.pruning.rewind = rewind
    return cfg


def test_finished_levels_are_not_retrained_and_levels_extend(data_dir, tmp_path):
    run = run_imp(tiny_config(), levels=1, out=tmp_path, progress=False)
    final = run.dir / "level_0" / "final.pt"
    stamp = final.stat().st_mtime_ns
    run2 = run_imp(tiny_config(), levels=2, out=tmp_path, progress=False)
    assert run2.dir == run.dir and final.stat().st_mtime_ns == stamp
    assert len(json.loads((run.dir / "summary.json").read_text())["levels"]) == 2


def test_dense_training_saves_requested_steps(data_dir, tmp_path):
    run = run_train(tiny_config(), "0,3it,1ep", out=tmp_path, progress=False)
    for t in (0, 3, 10):  # 400 training examples / batch 40 = 10 iterations per epoch
        ckpt = read_checkpoint(run.dir / "level_0" / f"step_{t}.pt")
        assert ckpt["step"]["iteration"] == t and ckpt["mask"] is None
    init = read_checkpoint(run.dir / "level_0" / "init.pt")["state_dict"]
    step0 = read_checkpoint(run.dir / "level_0" / "step_0.pt")["state_dict"]
    assert all(torch.equal(init[k], step0[k]) for k in init)
    import csv

    (row,) = csv.DictReader((run.dir / "summary.csv").open())
    assert row["step_paths"] == "level_0/step_0.pt;level_0/step_3.pt;level_0/step_10.pt"  # in step order
    assert row["final_path"] == "level_0/final.pt" and row["rewind_path"] == ""  # dense training: no W^k


def test_a_save_point_after_the_end_is_refused_before_the_run_folder_exists(data_dir, tmp_path):
    with pytest.raises(UserError, match="--save-at point 999ep is after the end of training"):
        run_train(tiny_config(), "0,999ep", out=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_run_on_cpu(data_dir, tmp_path):
    a = run_imp(tiny_config(), levels=2, out=tmp_path / "a", progress=False)
    b = run_imp(tiny_config(), levels=2, out=tmp_path / "b", progress=False)
    fa, fb = _all_files(a.dir), _all_files(b.dir)
    assert all(torch.equal(fa[k][n], fb[k][n]) for k in fa for n in fa[k])
    c = run_imp(tiny_config(seed=1), levels=1, out=tmp_path / "c", progress=False)
    assert c.dir.name != a.dir.name


def test_sigkill_mid_level_then_resume_matches(data_dir, tmp_path):
    """A real kill -9 of the command line while level 1 trains, then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    argv = [sys.executable, "-m", "training", "imp", "--data-dir", data_dir, "--model", "mnist1d_mlp",
            "--mnist1d-samples", "500", "--batch-size", "20", "--train-for", "30ep", "--levels", "2",
            "--rewind", "1ep", "--no-progress", "--threads", "1"]
    subprocess.run(argv + ["--out", str(tmp_path / "a")], check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(argv + ["--out", str(tmp_path / "b")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    state = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "b").glob("imp-*/level_1/state.pt"))
        if found:
            state = found[0]
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if state is None:
        pytest.skip("the run finished before it could be killed")
    assert not (state.parent / "final.pt").exists()
    subprocess.run(argv + ["--out", str(tmp_path / "b")], check=True, capture_output=True, timeout=300)
    (a_dir,) = (tmp_path / "a").glob("imp-*")
    (b_dir,) = (tmp_path / "b").glob("imp-*")
    a, b = _all_files(a_dir), _all_files(b_dir)
    assert all(torch.equal(a[k][n], b[k][n]) for k in a for n in a[k])
    assert not (b_dir / "level_1" / "state.pt").exists()
    assert not list(b_dir.rglob(".*.tmp"))  # no temporary file survives


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_one_shot_and_iterative_reach_the_same_count(data_dir, tmp_path, scope):
    def config():
        cfg = tiny_config(train_for="2ep")
        cfg.pruning.target_density, cfg.pruning.scope = 0.1, scope
        return cfg

    one_shot = run_imp(config(), levels=2, out=tmp_path, progress=False)
    iterative = run_imp(config(), levels=4, out=tmp_path, progress=False)
    assert one_shot.dir != iterative.dir
    final_a = load_mask(one_shot.dir / "level_1" / "mask.pt")
    final_b = load_mask(iterative.dir / "level_3" / "mask.pt")
    for name in final_a:  # per layer when layer-wise, in total when global
        if scope == "layerwise":
            assert int(final_a[name].sum()) == int(final_b[name].sum()) == int(0.1 * final_a[name].numel() + 0.5)
    total = sum(m.numel() for m in final_a.values())
    kept_a = sum(int(m.sum()) for m in final_a.values())
    assert kept_a == sum(int(m.sum()) for m in final_b.values())
    if scope == "global":
        assert kept_a == int(0.1 * total + 0.5)
        for level in (1, 2):  # the iterative schedule keeps D^(L/n)
            m = load_mask(iterative.dir / f"level_{level}" / "mask.pt")
            assert sum(int(v.sum()) for v in m.values()) == int(0.1 ** (level / 3) * total + 0.5)


def test_target_density_rejects_per_layer_rates(data_dir, tmp_path):
    from training.errors import UserError

    cfg = tiny_config()
    cfg.pruning.target_density, cfg.pruning.output_fraction = 0.1, 0.05
    with pytest.raises(UserError, match="drop --output-fraction"):
        run_imp(cfg, levels=3, out=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
