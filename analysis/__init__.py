"""Analysis of checkpoints written by ``training`` (Hessian spectra, mode connectivity, ...).

Nothing is implemented here yet; see the open issues.
"""
