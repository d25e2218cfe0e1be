"""The gallery's figures, in order: one module of ``figures`` each, defining ``FIGURE``."""
from __future__ import annotations

import importlib
import importlib.util

from .core import Figure

MODULES = (
    "hessian_spectra",        # 1. Tartaglione 2022, Fig. 2
    "lot_vs_rise",            # 2. Tartaglione 2022, Fig. 4 and Sec. 2
    "ticket_vs_controls",     # 3. Frankle & Carbin: ticket vs reinit and random pruning
    "instability",            # 4. Frankle et al. 2020: instability against the rewind point
    "mask_criteria",          # 5. Zhou et al.: mask criteria and mask-0 actions
    "pruning_at_init",        # 6. SNIP, SynFlow, magnitude, random against IMP
    "oneshot_vs_iterative",   # 7. Havinga & Sawhney after Liu et al.
    "structured_pruning",     # 8. L1-filter and slimming against Scratch-E/B
    "ticket_search_sizes",    # 9. Sahu et al.
    "lueker",                 # 10. Lueker's subset-sum theorem
    "overparameterisation",   # 11. Malach vs Pensia
    "strong_lth_network",     # 12. Pensia et al. at their scale
    "cs_vs_imp",              # Savarese et al., Fig. 3: continuous sparsification against IMP
    "supermask_ss_vs_cs",     # Savarese et al., Fig. 2: supermasks by stochastic against continuous sparsification
    "edge_popup_width",       # Ramanujan et al.: edge-popup subnetworks against width and k
    "deep_compression",       # Han, Mao & Dally: Deep Compression (Table 2) of an IMP ticket
)


def available() -> list[str]:
    """Module names of the figures that exist (in gallery order)."""
    return [m for m in MODULES if importlib.util.find_spec(f"figures.{m}") is not None]


def figures() -> list[Figure]:
    """Every available figure, in gallery order."""
    return [importlib.import_module(f"figures.{m}").FIGURE for m in available()]


def by_name() -> dict[str, Figure]:
    """``{name: Figure}`` for every available figure."""
    return {f.name: f for f in figures()}
