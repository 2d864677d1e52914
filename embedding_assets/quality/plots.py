"""The migration report's plots, drawn to PNG files with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

FIGURE_SIZE = (6.4, 3.6)
DPI = 110


def _saved(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def histogram(
    path: Path, series: Mapping[str, Sequence[float]], *, title: str, xlabel: str, bins: int = 30
) -> Path:
    """One histogram per named series, overlaid on shared bins."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    values = [v for s in series.values() for v in s]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    for name, data in series.items():
        axes.hist(list(data), bins=edges, alpha=0.55, label=f"{name} ({len(data)})")
    axes.set(title=title, xlabel=xlabel, ylabel="count")
    axes.legend()
    return _saved(figure, path)


def bars(path: Path, labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str) -> Path:
    """One bar per label (per query, say), in the order given."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    axes.bar(range(len(values)), values, color="tab:blue")
    axes.set(title=title, ylabel=ylabel, xlabel=f"{len(values)} queries, lowest first")
    axes.set_ylim(0, 1.05)
    if len(labels) <= 30:
        axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    else:
        axes.set_xticks([])
    return _saved(figure, path)
