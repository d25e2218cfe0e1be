"""Analysis of checkpoints and run folders written by ``training``.

- ``analysis.hessian``: top eigenvalues, trace and spectral density of the loss Hessian, in the
  full space or the ticket's subspace (``python -m analysis.hessian ckpt.pt``).
- ``analysis.hessian.linalg``: Lanczos, Hutchinson and stochastic Lanczos quadrature for any symmetric
  operator; ``analysis.hessian.operator``: the Hessian as such an operator.
- ``analysis.connectivity``: linear mode connectivity, error barriers and instability.
- ``analysis.trajectory``: trajectory length (Raghu et al.) and TL_gain.
- ``analysis.supermask``: supermask accuracy, Zhou et al.'s mask criteria, mask similarity.
- ``analysis.tickets``: Sahu et al.'s ticket-search metrics ("Not all lotteries are made equal") from a search's replicates.
"""
from training.cli import quiet_interrupts_during_import as _quiet

_quiet()
