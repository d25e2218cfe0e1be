"""One definition: flags, the run's hash and the saved config all follow from the dataclasses."""
import pytest

from training.__main__ import make_parser
from training.errors import UserError
from training.hparams import Config, TrainingHparams, build_config
from training.engine.steps import Step, parse_steps

SECTIONS = ["dataset", "model", "training", "pruning"]


def config_from(argv):
    args = make_parser().parse_args(["imp", *argv])
    return build_config(args, SECTIONS, args.preset)


def test_hash_ignores_defaults_and_sees_changes():
    base = config_from([])
    assert base.canonical() == "dataset()|model()|training()|pruning()"
    assert config_from(["--lr", "0.05"]).hash() == base.hash()  # the default value, spelled out
    assert config_from(["--lr", "0.01"]).hash() != base.hash()
    assert Config.from_dict(config_from(["--lr", "0.01"]).to_dict()) == config_from(["--lr", "0.01"])


def test_preset_then_flags():
    cfg = config_from(["--preset", "resnet32_cifar10", "--batch-size", "64"])
    assert cfg.model.model == "resnet32" and cfg.training.milestones == "80ep,120ep"
    assert cfg.training.weight_decay == 5e-5 and cfg.training.batch_size == 64
    with pytest.raises(UserError, match="unknown preset.*resnet32_cifar10"):
        config_from(["--preset", "resnet33"])


def test_boolean_flags_parse_both_ways():
    assert config_from(["--nesterov"]).training.nesterov is True
    assert config_from(["--no-nesterov"]).training.nesterov is False
    assert config_from(["--augment", "false"]).dataset.augment is False
    assert config_from(["--augment", "auto"]).dataset.augment is None


def test_steps():
    assert Step.parse("2ep").iterations(50) == 100 and Step.parse("500it").iterations(50) == 500
    assert Step.parse(0).iterations(50) == 0 and str(Step.parse("3ep")) == "3ep"
    assert [s.iterations(10) for s in parse_steps("80ep, 120ep")] == [800, 1200]
    with pytest.raises(UserError):
        Step.parse("1.5ep")


def test_training_defaults_are_the_demo():
    hp = TrainingHparams()
    assert (hp.optimizer, hp.lr, hp.train_for) == ("sgd", 0.05, "30ep")
