"""The gallery's one plotting style: sizes, fonts, a colour per role, and the reference lines a
reader needs (dense network, chance, a paper's threshold)."""
from __future__ import annotations

from typing import Optional

# one colour per role, the same in every figure
COLORS = {
    "dense": "0.25", "chance": "0.55", "ticket": "C0", "imp": "C0", "lot": "C1", "rise": "C2",
    "reinit": "C3", "random": "C7", "random-prune": "C7", "one-shot": "C1", "iterative": "C0",
    "scratch-e": "C4", "scratch-b": "C5", "fine-tune": "C2", "snip": "C1", "synflow": "C2",
    "magnitude": "C4", "bound": "0.3",
    "lr-large": "C6", "lr-small": "C9",  # two learning rates compared in one panel
    # strong-LTH constructions (theory figures)
    "single-product": "C3", "linear-diamond": "C2", "relu-diamond": "C0",
}

RC = {
    "figure.dpi": 100, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.6, "lines.markersize": 4,
    "errorbar.capsize": 2, "savefig.facecolor": "white", "figure.facecolor": "white",
}


def subplots(rows: int = 1, cols: int = 1, width: float = 4.2, height: float = 3.2, **kwargs):
    """``(fig, axes)`` in the gallery's style; each panel ``width`` x ``height`` inches."""
    from analysis.figure_io import pyplot

    plt = pyplot()
    with plt.rc_context(RC):
        fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                                 **kwargs)
    for ax in axes.flat:
        _style_axes(ax)
    return fig, axes


def _style_axes(ax) -> None:
    ax.grid(True, alpha=RC["grid.alpha"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=RC["xtick.labelsize"])
    ax.title.set_fontsize(RC["axes.titlesize"])
    ax.xaxis.label.set_fontsize(RC["axes.labelsize"])
    ax.yaxis.label.set_fontsize(RC["axes.labelsize"])


def dense_line(ax, accuracy: float, label: Optional[str] = None) -> None:
    """A horizontal line at the dense network's test accuracy (``accuracy`` in %)."""
    ax.axhline(accuracy, color=COLORS["dense"], linestyle="--", linewidth=1,
               label=label or f"dense network ({accuracy:.1f} %)")


def chance_line(ax, classes: int = 10) -> None:
    """A horizontal line at chance accuracy, 100 / ``classes`` %."""
    ax.axhline(100 / classes, color=COLORS["chance"], linestyle=":", linewidth=1,
               label=f"chance ({100 / classes:.0f} %)")


def legend(ax, **kwargs) -> None:
    """The legend, small and out of the data's way."""
    ax.legend(**{"fontsize": RC["legend.fontsize"], "frameon": False, **kwargs})


def title(fig, text: str) -> None:
    """The figure's title, above every panel."""
    fig.suptitle(text, fontsize=11)
    fig.tight_layout()


def density_axis(ax, label: str = "weights remaining (%, log scale)") -> None:
    """x axis for densities in %: log scale, dense on the left, plain-number ticks (100, 50, 20, ...)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if min(lo, hi) <= t <= max(lo, hi) * 1.001]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if lo < hi:
        ax.invert_xaxis()
    ax.set_xlabel(label)
