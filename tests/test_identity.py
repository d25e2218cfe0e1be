"""A run's identity (its folder name ``ALGORITHM-HASH``) covers every setting that changes its
numbers and nothing else (issue #17): the table is ``training.hparams.ExecutionHparams``'s docstring.

- CPU thread count (default 1), device type, precision, channels-last, compile, deterministic:
  part of the identity when not at their defaults (the CPU threads only for a CPU run);
- ``--out``, ``--no-progress``: never;
- a default run keeps the name it had before (``runs/imp-f6ec9936304d``), and a folder made before
  the execution settings were recorded resumes.
How far determinism goes: same seed, settings and machine give bit-identical weights; another
thread count gives other weights, in another folder."""
import json

import pytest
import torch

from tests.conftest import tiny_config
from training.__main__ import main
from training.algorithms.imp import run_train
from training.hparams import Config, ExecutionHparams, PruningHparams

TINY = ["--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--batch-size", "40", "--train-for", "1ep",
        "--levels", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    """Runs set the process's thread count: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def weights(folder, level=0):
    return torch.load(folder / f"level_{level}" / "final.pt", weights_only=True)["state_dict"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_default_run_keeps_its_name():
    assert Config(pruning=PruningHparams()).hash("imp") == "f6ec9936304d"  # the README's demo folder
    explicit = Config(pruning=PruningHparams(), execution=ExecutionHparams(device="cpu", threads=1, precision="fp32"))
    assert explicit.hash("imp") == "f6ec9936304d"
    assert explicit.canonical() == "dataset()|model()|training()|pruning()"


IDENTITY = [dict(threads=2), dict(threads=4), dict(device="cuda"), dict(precision="tf32"), dict(precision="bf16"),
            dict(precision="fp16"), dict(channels_last=True), dict(compile=True), dict(deterministic=True)]


def test_every_setting_that_changes_results_is_in_the_name():
    names = [Config(execution=ExecutionHparams(**setting)).hash("train") for setting in IDENTITY]
    assert len(set(names)) == len(IDENTITY)
    assert Config().hash("train") not in names


def test_on_a_gpu_the_cpu_threads_are_not_in_the_name():
    """The CPU threads of a GPU run only launch kernels and copy batches: no sum of the model."""
    gpu = ExecutionHparams(device="cuda")
    assert ExecutionHparams(device="cuda", threads=8).identity() == gpu.identity() == "execution(device='cuda')"
    assert ExecutionHparams(threads=8).identity() == "execution(threads=8)"


def test_the_execution_settings_round_trip_through_config_json():
    config = Config(execution=ExecutionHparams(threads=3, precision="bf16", compile=True))
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in config.to_dict().items() if k != "execution"}  # a folder made before they existed
    assert Config.from_dict(old).execution == ExecutionHparams()


def test_thread_counts_give_other_weights_and_other_folders(data_dir, tmp_path):
    runs = {}
    for threads in (1, 2):
        config = tiny_config(train_for="1ep")
        config.execution = ExecutionHparams(threads=threads)
        runs[threads] = run_train(config, out=tmp_path, progress=False)
        assert torch.get_num_threads() == threads  # the run used the count its identity names
    assert runs[1].dir != runs[2].dir
    assert runs[1].dir.name == run_train(tiny_config(train_for="1ep"), out=tmp_path, progress=False).dir.name
    assert not same(weights(runs[1].dir), weights(runs[2].dir))


def test_bf16_gives_other_weights_in_another_folder(data_dir, tmp_path):
    fp32 = run_train(tiny_config(train_for="1ep"), out=tmp_path, progress=False)
    config = tiny_config(train_for="1ep")
    config.execution = ExecutionHparams(precision="bf16")
    bf16 = run_train(config, out=tmp_path, progress=False)
    assert fp32.dir != bf16.dir and not same(weights(fp32.dir), weights(bf16.dir))


def test_same_seed_and_settings_are_bit_identical_and_out_and_progress_are_not_identity(data_dir, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["imp", *TINY, "--no-progress", "--out", str(first)]) == 0
    assert main(["imp", *TINY, "--out", str(second)]) == 0  # with progress output, elsewhere
    (a,), (b,) = list(first.glob("imp-*")), list(second.glob("imp-*"))
    assert a.name == b.name
    assert same(weights(a), weights(b))
    assert [json.loads(line)["test_loss"] for line in (a / "metrics.jsonl").read_text().splitlines()] == \
           [json.loads(line)["test_loss"] for line in (b / "metrics.jsonl").read_text().splitlines()]


def test_a_resume_with_another_thread_count_lands_in_another_folder(data_dir, tmp_path, capsys):
    assert main(["imp", *TINY, "--no-progress", "--out", str(tmp_path)]) == 0
    (first,) = list(tmp_path.glob("imp-*"))
    before = (first / "metrics.jsonl").read_text()
    assert main(["imp", *TINY[:-1], "2", "--no-progress", "--threads", "2", "--out", str(tmp_path)]) == 0
    second = [p for p in tmp_path.glob("imp-*") if p != first]
    assert len(second) == 1 and (second[0] / "level_1" / "final.pt").exists()
    assert (first / "metrics.jsonl").read_text() == before and not (first / "level_1").exists()
    stored = json.loads((second[0] / "config.json").read_text())
    assert stored["config"]["execution"]["threads"] == 2
    assert json.loads((first / "config.json").read_text())["config"]["execution"]["threads"] == 1


def test_a_folder_without_execution_settings_resumes(data_dir, tmp_path, capsys):
    """Folders made before the execution settings were recorded have no ``execution`` in their
    config.json: they are default runs (the hash says so) and resume."""
    assert main(["imp", *TINY, "--no-progress", "--out", str(tmp_path)]) == 0
    (folder,) = list(tmp_path.glob("imp-*"))
    path = folder / "config.json"
    stored = json.loads(path.read_text())
    del stored["config"]["execution"]
    path.write_text(json.dumps(stored))
    assert main(["imp", *TINY[:-1], "2", "--no-progress", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    assert list(tmp_path.glob("imp-*")) == [folder] and (folder / "level_1" / "final.pt").exists()


def test_channels_last_on_a_model_without_2d_convolutions_names_the_same_folder(data_dir, tmp_path):
    """--channels-last changes nothing for a 1-D model, so it is not part of that run's identity."""
    from training.__main__ import main

    argv = ["train", "--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "1ep", "--no-progress",
            "--out", str(tmp_path)]
    assert main(argv) == 0 and main(argv + ["--channels-last"]) == 0
    assert len(list(tmp_path.glob("train-*"))) == 1
