import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=50)
settings.register_profile("thorough", deadline=None, max_examples=1000)  # HYPOTHESIS_PROFILE=thorough
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
torch.set_num_threads(min(2, torch.get_num_threads()))

from training.hparams import (  # noqa: E402
    Config,
    DatasetHparams,
    ModelHparams,
    PruningHparams,
    TrainingHparams,
)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A shared data folder, so MNIST-1D is generated once per session."""
    path = tmp_path_factory.mktemp("data")
    os.environ["LTH_DATA_DIR"] = str(path)
    return str(path)


def tiny_config(**training) -> Config:
    """A run that trains in about a second: 400 MNIST-1D examples, an MLP, batch 40 (8 it/epoch)."""
    hp = dict(train_for="3ep", batch_size=40, lr=0.05, weight_decay=1e-4, eval_every="1ep")
    hp.update(training)
    return Config(DatasetHparams(mnist1d_samples=500), ModelHparams("mnist1d_mlp"), TrainingHparams(**hp),
                  PruningHparams(fraction=0.2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Three tiny finished runs for the analysis tools: two dense logistic regressions from
    different seeds (the first with a checkpoint at iteration 5) and a 2-level IMP run."""
    from training.algorithms.imp import run_imp, run_train

    out = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(train_for="2ep")
    cfg.model.model = "linear"
    logistic = run_train(cfg, "0,5it", out=out, progress=False)
    other = tiny_config(train_for="2ep", seed=3)
    other.model.model = "linear"
    logistic_b = run_train(other, out=out, progress=False)
    imp = run_imp(tiny_config(train_for="2ep"), levels=2, out=out, progress=False)
    return logistic, logistic_b, imp


@pytest.fixture(autouse=True)
def _tiny_runs_may_end_at_chance():
    """The suite's runs train for seconds and often learn nothing: a level at chance must not stop
    them (tests/test_run_folder.py checks the default, which stops, with allowing_diverged(False))."""
    from training.engine.runs import allowing_diverged

    with allowing_diverged():
        yield
