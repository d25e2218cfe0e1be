"""Masks and what ranks weights: the pruning scores and their registry (``pruning``), the
learned-mask weight forms (``masks``), gradient saliencies (``saliency``) and whole-channel
(structured) pruning (``channels``)."""
