"""Plotting helpers shared by the book's chapters (matplotlib only, imported on demand)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The book's text column is 688 px wide at 1280 px (tests/rendered/check_pages.py): a figure at most
# 11 in wide (1,100 px at 100 dpi) is shown at 62% or more, so its 10 pt tick labels stay at 8.6 px or more.
MAX_WIDTH = 11.0  # inches


def figure(ncols: int = 1, nrows: int = 1, size: float = 3.2, **kwargs):
    """A figure with ``nrows × ncols`` axes of ``size`` inches each (narrower if the row would
    be wider than ``MAX_WIDTH``), constrained layout."""
    import matplotlib.pyplot as plt

    size = min(size, MAX_WIDTH / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), layout="constrained", squeeze=False, **kwargs)
    return fig, axes


def scatter2d(ax, x: np.ndarray, title: str = "", lim: float = 4.5, **kwargs) -> None:
    """A labelled scatter plot of 2-D points with equal axes."""
    ax.scatter(x[:, 0], x[:, 1], s=kwargs.pop("s", 2), alpha=kwargs.pop("alpha", 0.5), **kwargs)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")


def trajectory_grid(states: Sequence, timesteps: Sequence[int], n_panels: int = 6, lim: float = 4.5):
    """Panels of a recorded sampling trajectory, x_T on the left to x_0 on the right."""
    idx = np.linspace(0, len(states) - 1, n_panels).round().astype(int)
    ncols = min(n_panels, 3)  # rows of three panels: readable in the book's column
    fig, axes = figure(ncols, -(-n_panels // ncols), size=2.6)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    for ax, i in zip(axes.flat, idx):
        t = timesteps[i]
        scatter2d(ax, np.asarray(states[i]), title=f"$x_{{{t + 1}}}$" if t >= 0 else "$x_0$", lim=lim)
    return fig


def animation_html(anim, alt: str):
    """A matplotlib animation as self-contained HTML: every frame embedded, so it plays
    without a kernel and offline. matplotlib's ``to_jshtml`` links Font Awesome from a CDN
    for its button icons; that link is dropped (the book's theme ships Font Awesome). ``alt``
    describes the animation to readers who cannot see it (the frames' alt text)."""
    import html as html_lib
    import re

    from IPython.display import HTML

    page = anim.to_jshtml(default_mode="once")
    page = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*">', "", page)
    return HTML(re.sub(r"<img\b", f'<img alt="{html_lib.escape(alt)}"', page))
