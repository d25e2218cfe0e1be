"""Analysis of checkpoints written by ``training``.

- ``analysis.hessian``: top eigenvalues, trace and spectral density of the loss Hessian, in the
  full space or the ticket's subspace (``python -m analysis.hessian ckpt.pt``).
- ``analysis.lanczos``: Lanczos, Hutchinson and stochastic Lanczos quadrature for any symmetric
  operator; ``analysis.hvp``: the Hessian as such an operator.

Linear mode connectivity, trajectory length and ticket-search metrics are not written yet.
"""
