"""The papers' figures, regenerated from real runs of this toolkit: ``python -m figures list``.

One module per figure (``figures.<module>.FIGURE``), each the figure's grid of runs (through
``training.sweep``) and its plot; ``figures.core`` holds what they share, ``figures.style`` the one
plotting style, ``figures.gallery`` the index page. ``figures.registry`` lists them in order.
"""
from training.cli import quiet_interrupts_during_import as _quiet

_quiet()
