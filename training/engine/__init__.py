"""The machinery every algorithm runs on: the training loop and its step (``loop``, ``steps``),
its extension points (``extensions``), checkpoints (``checkpoint``), run folders and levels
(``runs``), resumable branches of a run (``branches``), the MAC cost (``cost``), the metrics log
(``metrics_log``), seeds (``seeding``) and the provenance of a run (``provenance``)."""
