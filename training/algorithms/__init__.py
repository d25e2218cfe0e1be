"""The lottery algorithms, one module each: how a ticket is found and trained.

IMP with rewinding and I-LOT-R (``imp``), RISE-R (``rise``), pruning at initialisation
(``at_init``), LAMP ticket search (``ticket_search``), continuous and iterative stochastic
sparsification (``continuous_sparsification``, ``stochastic_sparsification``), edge-popup
(``edge_popup``) and the controls (``controls``). Each declares its command in
``training.commands``; the machinery they share is in ``training.engine`` and ``training.sparsity``.
"""
