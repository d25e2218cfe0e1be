"""Lottery-ticket experiments: models, offline data, masks and pruning, the training loop,
IMP with rewinding, and self-describing checkpoints.

Programmatic entry points::

    from training.hparams import Config
    from training.algorithms.imp import run_imp, run_train
    from training.algorithms.rise import run_rise         # RISE-R (Tartaglione 2022, Alg. 3)
    from training.engine.checkpoint import load      # checkpoint -> ready model, mask and dataset
"""
from training.cli import quiet_interrupts_during_import as _quiet

_quiet()
