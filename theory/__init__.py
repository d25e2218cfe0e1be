"""Numerical checks of lottery-ticket theory, after Part II of the lecture slides "From model
pruning to sparse updates and the LTH": Lueker's subset-sum theorem (Lueker 1998), Malach et al.
2020 ("Proving the lottery ticket hypothesis: pruning is all you need") and Pensia et al. 2020
("Optimal lottery tickets via SubsetSum: logarithmic over-parameterization is sufficient").
Needs numpy, scipy, numba and matplotlib, not torch.

- ``theory.subset_sum``: exact numba kernels ``best_subset``, ``covers``, ``worst_case_error``.
- ``theory.lueker``: Lueker's Theorem 2.4 by simulation (failure rates, the constant C, n needed).
- ``theory.strong_lth``: single-product, linear-diamond and ReLU-diamond constructions for a
  weight, a layer and a network (up to Pensia et al.'s 784-500-10 scale).

Command line: ``python -m theory {lueker,diamond,network}`` writes JSON and a PNG.
"""
from .cli import quiet_interrupts_during_import as _quiet

_quiet()
