"""One run on several processes (torchrun, DistributedDataParallel; training/engine/distributed.py),
tested on the CPU with gloo and 2 processes started by ``python -m torch.distributed.run``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from training.data import Split, TrainBatches
from training.hparams import ExecutionHparams

ROOT = Path(__file__).resolve().parents[1]
# 800 training examples in batches of 47: 18 global batches, sliced 24/23, the last one of a single
# example (rank 1's slice of it is empty); mnist1d_cnn has batch norm (global-batch statistics)
FLAGS = ["--levels", "2", "--train-for", "2ep", "--mnist1d-samples", "1000", "--batch-size", "47",
         "--model", "mnist1d_cnn", "--no-progress", "--allow-diverged"]


def _env(data_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "LTH_DATA_DIR": data_dir, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "LTH_DIST_TIMEOUT": "60"}


def torchrun(args: list[str], data_dir: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS`` (gloo on the CPU)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], capture_output=True, text=True, timeout=timeout, env=_env(data_dir), cwd=ROOT)


def single(args: list[str], data_dir: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=120,
                          env=_env(data_dir), cwd=ROOT)


def helper(tmp_path: Path, body: str) -> str:
    """A script that patches the toolkit (``body``) and then runs ``python -m training``'s main."""
    path = tmp_path / "helper.py"
    path.write_text(textwrap.dedent(body) + "\nimport sys\nfrom training.__main__ import main\nsys.exit(main())\n")
    return str(path)


def run_dir(out: Path) -> Path:
    (found,) = list(out.glob("imp-*"))
    return found


def final(folder: Path, level: int) -> dict:
    return torch.load(folder / f"level_{level}" / "final.pt", weights_only=True)


def assert_same_run(a: Path, b: Path, levels: int = 2) -> None:
    """Same masks, and weights and accuracies equal to float tolerance, level by level."""
    for level in range(levels):
        x, y = final(a, level), final(b, level)
        assert (x["mask"] or {}).keys() == (y["mask"] or {}).keys()
        for name in x["mask"] or {}:
            assert torch.equal(x["mask"][name], y["mask"][name]), (level, name)
        for name, value in x["state_dict"].items():
            torch.testing.assert_close(y["state_dict"][name], value, rtol=1e-4, atol=1e-5)
        assert y["meta"]["results"]["test_accuracy"] == pytest.approx(x["meta"]["results"]["test_accuracy"], abs=2e-3)
        assert y["meta"]["results"]["train_loss"] == pytest.approx(x["meta"]["results"]["train_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> Path:
    """The single-process run every 2-process run is compared with."""
    out = tmp_path_factory.mktemp("single")
    done = single(["imp", *FLAGS, "--out", str(out)], data_dir)
    assert done.returncode == 0, done.stderr
    return run_dir(out)


def test_rank_slices_are_the_single_process_batches():
    """Every rank's slice of every global batch, augmentation included, concatenated in rank
    order, is the single-process batch; a final batch shorter than the world leaves a rank empty."""
    split = Split(torch.randn(11, 3, 8, 8), torch.arange(11))
    whole = list(TrainBatches(split, 5, seed=3, augment=True).epoch(1))
    for world in (2, 3):
        ranks = [list(TrainBatches(split, 5, seed=3, augment=True, rank=r, world_size=world).epoch(1))
                 for r in range(world)]
        for i, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([ranks[r][i][0] for r in range(world)]), x)
            assert torch.equal(torch.cat([ranks[r][i][1] for r in range(world)]), y)
    last = [list(TrainBatches(split, 5, seed=3, augment=True, rank=r, world_size=2).epoch(0))[-1] for r in (0, 1)]
    assert len(last[0][1]) == 1 and len(last[1][1]) == 0
    skipped = list(TrainBatches(split, 5, seed=3, augment=True, rank=1, world_size=2).epoch(1, skip=1))
    again = list(TrainBatches(split, 5, seed=3, augment=True, rank=1, world_size=2).epoch(1))
    assert len(skipped) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(skipped, again[1:]))


def test_world_size_is_part_of_the_identity():
    assert ExecutionHparams().identity() == ""
    assert ExecutionHparams(world_size=2).identity() == "execution(world_size=2)"


def test_two_processes_train_the_single_process_run(tmp_path, reference, data_dir):
    """torchrun --nproc_per_node 2: the same masks and, to float tolerance, the same weights and
    metrics as one process; only rank 0 wrote files and printed."""
    done = torchrun(["-m", "training", "imp", *FLAGS, "--out", str(tmp_path)], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = run_dir(tmp_path)
    assert folder.name != reference.name  # world size 2 is another run
    assert_same_run(reference, folder)
    assert done.stdout.count("run folder:") == 1  # rank 1 printed nothing
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["execution"]["world_size"] == 2 and len(config["provenance"]) == 1
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    mine = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [(r["level"], r["iteration"]) for r in rows] == [(r["level"], r["iteration"]) for r in mine]  # once each
    for a, b in zip(rows, mine):
        assert a.get("train_loss", 0) == pytest.approx(b.get("train_loss", 0), rel=1e-4)
        assert a.get("train_accuracy") == b.get("train_accuracy")
    assert not list(folder.rglob("*.tmp")) and not list(folder.rglob("state.pt"))


def test_a_killed_two_process_run_resumes(tmp_path, reference, data_dir):
    """Rank 0 killed (SIGKILL) right after it wrote level 1's first resume state; torchrun stops
    rank 1; the same command resumes from that state and ends where one process ends."""
    script = helper(tmp_path, """
        import os, signal
        from training.engine import distributed, loop
        write = loop.atomic_save
        def killing(obj, path):
            write(obj, path)
            if path.name == "state.pt" and path.parent.name == "level_1" and distributed.is_main():
                os.kill(os.getpid(), signal.SIGKILL)
        loop.atomic_save = killing
    """)
    out = tmp_path / "out"
    killed = torchrun([script, "imp", *FLAGS, "--out", str(out)], data_dir)
    assert killed.returncode != 0
    folder = run_dir(out)
    state = torch.load(folder / "level_1" / "state.pt", weights_only=True)
    assert state["iteration"] == 18 and not (folder / "level_1" / "final.pt").exists()
    done = torchrun(["-m", "training", "imp", *FLAGS, "--out", str(out)], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (folder / "level_1" / "state.pt").exists()
    assert_same_run(reference, folder)
    iterations = [r["iteration"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
                  if r["level"] == 1]
    assert iterations == [0, 18, 36]


def test_a_mask_that_differs_between_ranks_stops_every_rank(tmp_path, data_dir):
    script = helper(tmp_path, """
        from training.engine import distributed, runs
        make = runs.Run.mask_for
        def mask_for(self, level, *args):
            mask = make(self, level, *args)
            if level == 1 and distributed.rank() == 1:
                name = sorted(mask)[0]
                mask[name] = mask[name].clone()
                mask[name].view(-1)[0] = ~mask[name].view(-1)[0]
            return mask
        runs.Run.mask_for = mask_for
    """)
    done = torchrun([script, "imp", *FLAGS, "--out", str(tmp_path / "out")], data_dir)
    assert done.returncode != 0
    # each rank raises and prints (torchrun may stop rank 1 before its line is out, once rank 0 exited)
    lines = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
    assert 1 <= len(lines) <= 2
    assert all("the mask of level 1 differs between ranks (rank 0 and rank 1" in l for l in lines)
    assert "Traceback (most recent call last):\n  File \"" + str(ROOT) not in done.stderr
    assert not (run_dir(tmp_path / "out") / "level_1" / "final.pt").exists()


COMMANDS = {  # every run command, tiny; control branches off the lot run
    "lot": ["lot", "-R", "50", "-I", "1", "-k", "3it"],
    "rise": ["rise", "-R", "50", "-k", "3it"],
    "at-init": ["at-init", "--score", "snip", "--target-density", "0.3"],
    "train": ["train", "--save-at", "5it"],
    "cs": ["cs", "--rounds", "1"],
    "iss": ["iss", "--rounds", "1"],
    "edge-popup": ["edge-popup"],
    "ticket-search": ["ticket-search", "--replicates", "1", "--stages", "2"],
    "control": ["control", "reinit", "{lot}", "--level", "1", "--no-progress"],
}
SMALL = ["--mnist1d-samples", "500", "--batch-size", "47", "--train-for", "1ep", "--no-progress", "--allow-diverged"]
SEQUENCE = """
    import glob, json, sys
    from training.__main__ import main
    out = sys.argv.pop(1)
    for name, argv in json.loads(sys.argv.pop(1)).items():
        lot = glob.glob(f"{out}/lot/imp-*")
        argv = [a.replace("{lot}", lot[0] if lot else "") for a in argv]
        flags = [] if name == "control" else [*json.loads(sys.argv[1]), "--out", f"{out}/{name}"]
        if main([*argv, *flags]):
            sys.exit(f"{name} failed")
    sys.exit(0)
"""


def test_every_run_command_trains_the_single_process_run_on_two_processes(tmp_path, data_dir):
    """lot, rise, at-init, train, cs, iss, edge-popup, ticket-search and control: the 2-process runs
    end with the single-process runs' masks and (to float tolerance) weights, level by level."""
    script = tmp_path / "sequence.py"
    script.write_text(textwrap.dedent(SEQUENCE))
    args = [json.dumps(COMMANDS), json.dumps(SMALL)]
    alone = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), *args], capture_output=True,
                           text=True, timeout=120, env=_env(data_dir), cwd=ROOT)
    assert alone.returncode == 0, alone.stderr[-3000:]
    done = torchrun([str(script), str(tmp_path / "two"), *args], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    compared = 0
    for name in COMMANDS:
        if name == "control":
            ones = list((tmp_path / "one" / "lot").glob("imp-*/branches/*"))
            twos = list((tmp_path / "two" / "lot").glob("imp-*/branches/*"))
        else:
            ones = sorted(p for p in (tmp_path / "one" / name).iterdir() if p.is_dir())
            twos = sorted(p for p in (tmp_path / "two" / name).iterdir() if p.is_dir())
        assert len(ones) == len(twos) == 1, (name, ones, twos)
        levels = len(list(ones[0].glob("level_*/final.pt")))
        assert levels and len(list(twos[0].glob("level_*/final.pt"))) == levels, name
        assert_same_run(ones[0], twos[0], levels)
        compared += 1
    assert compared == len(COMMANDS)
