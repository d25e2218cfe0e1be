"""Derived seeds: every random stream of a run (init, data order, augmentation, pruning) gets its
own seed, computed from the run seed and a label, so streams never share state and a resumed run
draws exactly the numbers an uninterrupted one would."""
import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """Return a 63-bit seed determined by ``parts`` (e.g. ``(seed, "order", epoch)``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
