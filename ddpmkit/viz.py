"""Plotting helpers shared by the book's chapters (matplotlib only, imported on demand)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def figure(ncols: int = 1, nrows: int = 1, size: float = 3.2, **kwargs):
    """A figure with ``nrows × ncols`` axes of ``size`` inches each, constrained layout."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), layout="constrained", squeeze=False, **kwargs)
    return fig, axes


def scatter2d(ax, x: np.ndarray, title: str = "", lim: float = 4.5, **kwargs) -> None:
    """A labelled scatter plot of 2-D points with equal axes."""
    ax.scatter(x[:, 0], x[:, 1], s=kwargs.pop("s", 2), alpha=kwargs.pop("alpha", 0.5), **kwargs)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")


def trajectory_grid(states: Sequence, timesteps: Sequence[int], n_panels: int = 6, lim: float = 4.5):
    """Panels of a recorded sampling trajectory, x_T on the left to x_0 on the right."""
    idx = np.linspace(0, len(states) - 1, n_panels).round().astype(int)
    fig, axes = figure(n_panels, 1, size=2.2)
    for ax, i in zip(axes[0], idx):
        t = timesteps[i]
        scatter2d(ax, np.asarray(states[i]), title=f"$x_{{{t + 1}}}$" if t >= 0 else "$x_0$", lim=lim)
    return fig


def animation_html(anim):
    """A matplotlib animation as self-contained HTML: every frame embedded, so it plays
    without a kernel and offline. matplotlib's ``to_jshtml`` links Font Awesome from a CDN
    for its button icons; that link is dropped (the book's theme ships Font Awesome)."""
    import re

    from IPython.display import HTML

    html = anim.to_jshtml(default_mode="once")
    return HTML(re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*">', "", html))
