"""The README stays true: its commands parse, its run folders are the ones the commands make,
and it names papers by author and title."""
import re
import shlex
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(prefix: str) -> list[list[str]]:
    """The README's shell lines that start with ``python -m PREFIX``, split into words, without
    the trailing comment, with $VARIABLES replaced by a placeholder path."""
    out = []
    for line in README.splitlines():
        if not line.startswith(f"python -m {prefix} "):
            continue
        words = shlex.split(re.sub(r"\$\(.*?\)|\$\w+", "runs/x", line), comments=True)
        if "--help" not in words:
            out.append(words[3:])
    return out


def test_names_papers_not_seed_files():
    assert not re.search(r"seed 00\d", README)


def test_no_globs_that_match_other_runs():
    # `runs/imp-*/...` picks up every run the tour made, not the one the text means
    assert not re.search(r"runs/[a-z-]+-\*/", README)


def test_training_commands_parse():
    from training.__main__ import make_parser

    commands = _commands("training")
    assert len(commands) > 15
    from training.sweep import make_parser as sweep_parser
    from training.sweep import parse_grid, point_argv, points

    parser = make_parser()
    for argv in commands:
        if argv[0] == "sweep":  # every point of the grid is a command line of its own
            args, base = sweep_parser().parse_known_args(argv[1:])
            for point in points(parse_grid(args.grid)):
                parser.parse_args(point_argv(args.command, base, point))
            continue
        parser.parse_args(argv)  # SystemExit(2) on an unknown flag or a bad value


def test_theory_commands_parse():
    from theory.__main__ import make_parser

    commands = _commands("theory")
    assert len(commands) >= 4
    for argv in commands:
        make_parser().parse_args(argv)


@pytest.mark.parametrize("variable, argv", [("RUN", ["imp"]), ("TRAIN", ["train", "--save-at", "0,1ep,2ep,5ep"])])
def test_run_folders_named_in_the_readme_are_the_commands_folders(variable, argv, monkeypatch, tmp_path):
    import training.engine.runs
    from training.__main__ import main
    from training.hparams import Config

    named = set(re.findall(rf"^{variable}=runs/([\w-]+)", README, flags=re.M))
    assert len(named) == 1, f"README sets {variable} to {named}"
    hashes = []
    original = Config.hash
    monkeypatch.setattr(Config, "hash", lambda self, *a: hashes.append((a[0], original(self, *a))) or hashes[-1][1])

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(training.engine.runs, "load_dataset", stop)  # the folder's name is known by then
    with pytest.raises(Stop):
        main([*argv, "--out", str(tmp_path)])
    algorithm, digest = hashes[-1]
    assert named == {f"{algorithm}-{digest}"}


def test_figures_commands_parse_and_name_real_figures():
    from figures.__main__ import make_parser
    from figures.registry import by_name

    commands = _commands("figures")
    assert len(commands) >= 3
    known = by_name()
    for argv in commands:
        args = make_parser().parse_args(argv)
        assert args.what in (["list"], ["all"]) or all(w in known for w in args.what), argv


def test_gallery_thumbnails_in_the_readme_exist():
    root = Path(__file__).resolve().parents[1]
    images = re.findall(r'src="(docs/gallery/[\w.-]+\.png)"', README)
    assert images, "the Figures section shows the gallery's thumbnails"
    for image in images:
        assert (root / image).is_file(), image


def test_the_cs_defaults_the_readme_states_are_the_codes():
    """The CS section quotes its defaults in the sentence that reports the default run's numbers;
    they must be the ones `python -m training cs` runs with."""
    from training.algorithms.continuous_sparsification import DEFAULT_ADAM_MASK_LR, CSHparams

    match = re.search(r"\(`python -m training cs`: [^)]*?lambda (\S+),\s+s_0 (\S+), beta_T (\S+), Adam (\S+) on s",
                      README)
    assert match, "the CS section states the defaults of its measured run"
    stated = [float(v) for v in match.groups()]
    hp = CSHparams()
    assert stated == [hp.penalty, hp.mask_init, hp.beta_final, DEFAULT_ADAM_MASK_LR]
    mask_lr = re.search(r"\(`--mask-lr`, default ([\d.e-]+)\)", README)
    assert mask_lr and float(mask_lr.group(1)) == DEFAULT_ADAM_MASK_LR


def test_every_execution_setting_is_in_the_readmes_identity_table():
    """The table of what names a run folder lists every execution setting (the flags that can
    change a run's numbers), so a new one cannot be left undocumented."""
    import dataclasses

    from training.hparams import ExecutionHparams

    table = README.split("### What names a run folder", 1)[-1].split("\n\n")[2]
    assert table.startswith("| setting |")
    for f in dataclasses.fields(ExecutionHparams):
        flag = "`torchrun --nproc_per_node" if f.name == "world_size" else f"`--{f.name.replace('_', '-')}"
        assert flag in table, f.name
