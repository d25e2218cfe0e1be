"""Figures of the analysis tools: a headless pyplot and an atomic PNG write."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` through a temporary file and a rename, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    tmp.replace(path)


LINE_STYLES = ("-", "--", ":", "-.")


def line_style(index: int, colors: int = 10) -> dict:
    """Colour and dash pattern of the ``index``-th series: the ten default colours first, then the
    same colours again with the next dash pattern, so no two of up to 40 series look alike."""
    return {"color": f"C{index % colors}", "linestyle": LINE_STYLES[(index // colors) % len(LINE_STYLES)]}


def checkpoint_density(ckpt: dict) -> float:
    """Fraction of prunable weights the checkpoint keeps: its ``meta["density"]``, else counted
    from its mask; 1.0 for a dense checkpoint."""
    density = (ckpt.get("meta") or {}).get("density")
    mask = ckpt.get("mask")
    if density is None and mask:
        density = sum(int(m.sum()) for m in mask.values()) / max(1, sum(m.numel() for m in mask.values()))
    return 1.0 if density is None else float(density)


def run_name(path, ckpt: dict) -> str:
    """``ALGORITHM-HASH6`` of the run that wrote the checkpoint (the file name for foreign files)."""
    meta = ckpt.get("meta") or {}
    if "run_hash" not in meta:
        return Path(path).name
    return f"{meta.get('algorithm', 'run')}-{str(meta['run_hash'])[:6]}"


def checkpoint_label(path, ckpt: dict) -> str:
    """A readable legend label for a checkpoint: ``ALGORITHM-HASH6 L<level> <kind> <density>%``
    (e.g. ``imp-3fa2c1 L4 final 41.0%``), falling back to the file name for foreign files. Where the
    weights outside the mask are frozen, not zero (RISE), both densities: ``10.0% trained, 100.0%
    non-zero``."""
    meta = ckpt.get("meta") or {}
    if "run_hash" not in meta:
        return Path(path).name
    label = (f"{run_name(path, ckpt)} L{meta.get('level', '?')} {meta.get('kind', Path(path).stem)} "
             f"{100 * checkpoint_density(ckpt):.1f}%")
    if meta.get("masked_weights") == "frozen" and ckpt.get("mask") is not None:
        from training.engine.runs import nonzero_density

        label += f" trained, {100 * nonzero_density(ckpt):.1f}% non-zero"
    return label


def unique_labels(labels: list[str]) -> list[str]:
    """``labels`` with repeats made distinct by a ``(2)``, ``(3)``... suffix, in order."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
