"""The registries: commands (``training.commands``), scores (``training.sparsity.pruning.SCORES``), datasets
(``training.data.DATASET_SPECS``) and controls (``training.algorithms.controls.CONTROLS``). A new entry is one
registry line: nothing else (``training/__main__.py`` least of all) needs an edit."""
import argparse

import numpy as np
import pytest
import torch

import training.commands as commands
from training.__main__ import main, make_parser, prepare
from training.commands import Command, prepare_run, run_flags
from training.algorithms.controls import CONTROLS, Control, control_named
from training.data import DATASET_SPECS, DatasetSpec, load_dataset
from training.errors import UserError
from training.hparams import SECTIONS, DatasetHparams
from training.sparsity.pruning import SCORE_KINDS, SCORES, Score, prune, score_named

# Captured from the CLI before the registry (hand-built sub-parsers and an if-chain in prepare):
# each command's own flags and the defaults they parse to.
RUN_GROUP = {"--preset": None, "--out": "runs", "--data-dir": None, "--device": "auto", "--threads": 1,
             "--precision": "fp32", "--channels-last": False, "--compile": False, "--deterministic": False,
             "--no-progress": False, "--allow-diverged": False, "--log": (), "--log-project": "lth-toolkit", "--log-group": "", "--mlflow-uri": ""}
OWN = {
    "imp": {"--levels": 5, "-R/--keep": None},
    "lot": {"-I/--iterations": 4, "-R/--keep": None},
    "rise": {"-R/--keep": None},
    "ticket-search": {"--stages": 5, "--replicates": 1},
    "at-init": {"--keep": None},
    "train": {"--save-at": ""},
}
PRUNING_RUN = ["dataset", "model", "training", "pruning"]
SECTIONS_OF = {"imp": PRUNING_RUN, "lot": PRUNING_RUN, "rise": PRUNING_RUN, "ticket-search": PRUNING_RUN,
               "at-init": PRUNING_RUN, "train": ["dataset", "model", "training"]}
CONTROL_FLAGS = {"name": None, "run": None, "--level": None, "--seed": None, "--data-dir": None, "--device": "auto",
                 "--threads": None, "--no-progress": False}
ORDER = ["imp", "lot", "rise", "ticket-search", "at-init", "train", "control", "list", "sweep"]


def subparsers(parser: argparse.ArgumentParser) -> dict:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def flags(parser: argparse.ArgumentParser) -> dict:
    out = {}
    for action in parser._actions:
        if action.dest == "help":
            continue
        name = "/".join(action.option_strings) or action.dest
        out[name] = None if action.default is argparse.SUPPRESS else action.default
    return out


def hparam_flags(section_names) -> dict:
    parser = argparse.ArgumentParser()
    from training.hparams import add_flags

    add_flags(parser, section_names)
    return {k: v for k, v in flags(parser).items()}


def test_every_command_keeps_its_flags_and_defaults():
    subs = subparsers(make_parser())
    assert [n for n in subs if n in ORDER] == ORDER  # new algorithms may join; these keep their order
    for name, own in OWN.items():
        assert flags(subs[name]) == {**own, **RUN_GROUP, **hparam_flags(SECTIONS_OF[name])}, name
    assert flags(subs["control"]) == CONTROL_FLAGS
    assert flags(subs["list"]) == {}
    assert not subs["sweep"].add_help  # `sweep --help` is training.sweep's own parser
    assert set(hparam_flags(SECTIONS_OF["imp"])) > {"--score", "--fraction", "-k/--rewind", "--lr", "--dataset"}
    assert set(SECTIONS) == set(PRUNING_RUN)


def _dummy(calls: list) -> Command:
    def own(parser):
        parser.add_argument("--width", type=int, default=2, help="the dummy's own flag (default: 2)")

    def run(config, **common):
        calls.append((config, common))
        return "ran"

    def check_width(args):
        if args.width < 1:
            raise UserError(f"--width must be at least 1, got {args.width}")

    return Command("dummy-algorithm", "a dummy algorithm registered by a test",
                   "A dummy algorithm: its flags, its checks and its run come from its Command alone.",
                   "examples:\n  python -m training dummy-algorithm --width 3", run_flags(own),
                   lambda args: prepare_run(args, run, adjust=check_width))


@pytest.fixture
def dummy(monkeypatch):
    calls: list = []
    registered = commands.registry()
    monkeypatch.setattr(commands, "registry", lambda: [*registered[:-2], _dummy(calls), *registered[-2:]])
    return calls


def test_a_new_algorithm_is_one_registry_entry(dummy, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "dummy-algorithm" in out and "a dummy algorithm registered by a test" in out
    with pytest.raises(SystemExit):
        main(["dummy-algorithm", "--help"])
    out = capsys.readouterr().out
    assert "--width WIDTH" in out and "--score" in out and "python -m training dummy-algorithm --width 3" in out

    args = make_parser().parse_args(["dummy-algorithm", "--width", "3", "--lr", "0.2", "--out", str(tmp_path)])
    assert args.width == 3
    assert prepare("dummy-algorithm", args)() == "ran"
    config, common = dummy[-1]
    assert config.training.lr == 0.2 and config.pruning is not None and common["out"] == str(tmp_path)
    assert main(["dummy-algorithm", "--out", str(tmp_path), "--no-progress"]) == 0 and len(dummy) == 2

    # its own checks and the shared ones are one line, before the run
    assert main(["dummy-algorithm", "--width", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --width must be at least 1, got 0\n"
    assert main(["dummy-algorithm", "--out", "/proc/nope/x"]) == 2
    assert capsys.readouterr().err.startswith("error: --out /proc/nope/x cannot be created")
    assert len(dummy) == 2

    from training.sweep import plan, runnable

    assert "dummy-algorithm" in runnable()
    assert len(plan("dummy-algorithm", {"width": ["1", "2"]}, ["--out", str(tmp_path)])) == 2


def test_an_unknown_command_is_one_line(capsys):
    with pytest.raises(UserError, match="unknown command 'nope'; choose one of: imp, lot"):
        prepare("nope", argparse.Namespace())
    with pytest.raises(SystemExit) as done:
        main(["nope"])
    assert done.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_every_score_resolves_through_the_registry():
    from training.__main__ import make_parser

    imp = make_parser()._subparsers._group_actions[0].choices["imp"]
    cli_choices = next(a for a in imp._actions if "--score" in a.option_strings).choices
    assert list(SCORES) == list(cli_choices)  # the flag's choices are the registry's names
    for name in cli_choices:
        score = score_named(name)
        assert score.name == name and score.kind in SCORE_KINDS and callable(score.fn)
    assert {n for n, s in SCORES.items() if s.needs_network} == {"snip", "synflow", "l1-filter", "slimming"}
    assert score_named("l1-filter", "structured").per_layer and not score_named("slimming").per_layer
    with pytest.raises(UserError, match="unknown pruning score 'bogus'; choose one of: magnitude, random, lamp"):
        score_named("bogus")
    with pytest.raises(UserError, match="unknown structured score 'lamp'; choose one of: l1-filter, slimming"):
        score_named("lamp", "structured")


def test_prune_dispatches_through_the_registry(monkeypatch):
    weights = {"w": torch.tensor([3.0, -1.0, 2.0, -4.0])}
    mask = {"w": torch.ones(4, dtype=torch.bool)}
    monkeypatch.setitem(SCORES, "smallest", Score("smallest", "weights", lambda w, m, seed: {n: -w[n].abs() for n in m}))
    assert prune(weights, mask, 0.5, score="smallest")["w"].tolist() == [False, True, True, False]
    assert prune(weights, mask, 0.5, score="magnitude")["w"].tolist() == [True, False, False, True]
    with pytest.raises(UserError) as err:
        prune(weights, mask, 0.5, score="bogus")
    assert "\n" not in str(err.value) and "smallest" in str(err.value)


def test_every_dataset_resolves_through_the_registry(data_dir):
    assert list(DATASET_SPECS) == ["mnist1d", "mnist", "cifar10", "cifar100", "imagenet"]
    for name, spec in DATASET_SPECS.items():
        assert spec.name == name and spec.classes in (10, 100, 1000) and len(spec.shape) in (2, 3)
    data = load_dataset(DatasetHparams(mnist1d_samples=500), data_dir)
    assert data.input_shape == DATASET_SPECS["mnist1d"].shape and data.num_classes == 10


def test_a_new_dataset_is_one_registry_entry(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)

    def read(folder, hp):
        return (rng.normal(size=(30, 1, 6)), np.arange(30) % 3, rng.normal(size=(9, 1, 6)), np.arange(9) % 3)

    monkeypatch.setitem(DATASET_SPECS, "tiny", DatasetSpec("tiny", read, 3, (1, 6)))
    data = load_dataset(DatasetHparams(dataset="tiny"), tmp_path)
    assert data.num_classes == 3 and data.input_shape == (1, 6) and len(data.train) == 30
    monkeypatch.setitem(DATASET_SPECS, "wrong-shape", DatasetSpec("wrong-shape", read, 3, (1, 7)))
    with pytest.raises(UserError, match=r"wrong-shape training inputs have shape \(1, 6\), expected \(1, 7\)"):
        load_dataset(DatasetHparams(dataset="wrong-shape"), tmp_path)


def test_an_unknown_dataset_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["imp", "--dataset", "svhn", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("error: unknown dataset 'svhn'; choose one of: mnist1d, mnist, cifar10, "
                                       "cifar100, imagenet\n")
    assert not out.exists()


def test_every_control_resolves_through_the_registry(monkeypatch, tmp_path, capsys):
    assert list(CONTROLS) == ["reinit", "scratch-e", "scratch-b", "random-prune", "reshuffle", "signed-constant"]
    for name in CONTROLS:
        control = control_named(name)
        assert isinstance(control, Control) and control.name == name and callable(control.start)
    assert {n for n, c in CONTROLS.items() if c.fresh_init} == {"reinit", "scratch-e", "scratch-b"}
    assert [n for n, c in CONTROLS.items() if c.rescale] == ["scratch-b"]
    monkeypatch.setitem(CONTROLS, "identity", Control("identity", lambda src: (src.rewind_weights(), src.mask, 0)))
    assert control_named("identity").name == "identity"
    assert main(["control", "bogus", str(tmp_path), "--level", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown control 'bogus'; choose one of: reinit,") and err.count("\n") == 1
    assert "identity" in err


@pytest.mark.parametrize("command, flag, shown", [("edge-popup", "--lr", "0.1"), ("edge-popup", "--schedule", "cosine"),
                                                  ("ticket-search", "--score", "lamp"),
                                                  ("ticket-search", "--fraction", "0.16"), ("imp", "--lr", "0.05")])
def test_help_shows_each_commands_own_defaults(command, flag, shown):
    sub = subparsers(make_parser())[command]
    action = next(a for a in sub._actions if flag in a.option_strings)
    assert action.help.endswith(f"(default: {shown})"), action.help
