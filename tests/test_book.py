"""Static checks of the book: nbval references are fresh, every figure has a caption,
and chapters import the library rather than re-implementing it."""

import re

import jupytext
import nbformat
import pytest
from make_nbval_refs import CHECK_TAG, OUT, assignment_sources, chapters, code_sources

CHAPTERS = chapters()
EXECUTED = CHAPTERS + assignment_sources()


def test_every_chapter_with_code_has_an_nbval_reference():
    assert {p.stem for p in EXECUTED} == {p.stem for p in OUT.glob("*.ipynb")}


@pytest.mark.parametrize("md", EXECUTED, ids=lambda p: p.stem)
def test_nbval_reference_is_fresh(md):
    ref = nbformat.read(OUT / f"{md.stem}.ipynb", as_version=4)
    assert code_sources(ref) == code_sources(jupytext.read(md)), f"tests/nbval/{md.stem}.ipynb is stale: run `make nbval-refs`"
    checked = [c for c in ref.cells if CHECK_TAG in c.metadata.get("tags", [])]
    assert checked and all(c.outputs for c in checked), "each chapter compares at least one output"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_has_a_caption(md):
    nb = jupytext.read(md)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and re.search(r"\b(figure|trajectory_grid)\(", cell.source):
            nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
            assert nxt is not None and nxt.cell_type == "markdown" and nxt.source.lstrip().startswith("*Figure"), (
                f"{md.name}: the figure made by cell {i} has no '*Figure: ...*' caption after it"
            )
            alt = cell.metadata.get("mystnb", {}).get("image", {}).get("alt", "")
            assert len(alt.split()) >= 5, f"{md.name}: the figure made by cell {i} has no alt text (mystnb: image: alt:)"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_do_not_redefine_library_code(md):
    nb = jupytext.read(md)
    defs = [m for c in nb.cells if c.cell_type == "code" for m in re.findall(r"^(?:def|class) (\w+)", c.source, re.MULTILINE)]
    import ddpmkit
    import ddpmkit.diffusion
    import ddpmkit.metrics
    import ddpmkit.models
    import ddpmkit.samplers
    import ddpmkit.schedules

    library = set()
    for mod in (ddpmkit, ddpmkit.diffusion, ddpmkit.samplers, ddpmkit.models, ddpmkit.metrics, ddpmkit.schedules):
        library |= set(dir(mod))
    assert not (set(defs) & library), f"{md.name} redefines library code: {set(defs) & library}"


def test_intro_lists_every_chapter_of_the_toc():
    """The landing page's list of chapters is the table of contents: a chapter added to
    _toc.yml must be introduced there too."""
    import yaml

    root = CHAPTERS[0].parents[1]
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [c["file"].removeprefix("book/") for part in toc["parts"] for c in part["chapters"]]
    intro = (root / "book" / "intro.md").read_text()
    missing = [f for f in files if f"{{doc}}`{f}`" not in intro]
    assert not missing, f"book/intro.md does not introduce {missing}"


def test_animations_are_self_contained():
    """An animation in the book plays offline: its HTML embeds every frame and fetches nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation

    from ddpmkit.viz import animation_html

    fig, ax = plt.subplots()
    (line,) = ax.plot([0, 1], [0, 1])
    anim = animation.FuncAnimation(fig, lambda i: (line.set_ydata([0, i]), line)[1:], frames=3)
    html = animation_html(anim, alt='a line "rising"').data
    plt.close(fig)
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64") == 3
    assert '<img alt="a line &quot;rising&quot;"' in html  # the frames' alt text, escaped


def test_figures_fit_the_column():
    """No figure is wider than viz.MAX_WIDTH: shown in the 688 px column, its tick labels stay >= 8 px."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpmkit.viz import MAX_WIDTH, figure, trajectory_grid

    for ncols, size in [(1, 7), (3, 3.3), (6, 2.3), (10, 3)]:
        fig, axes = figure(ncols, 1, size=size)
        assert fig.get_figwidth() <= MAX_WIDTH + 1e-9 and axes.shape == (1, ncols)
        plt.close(fig)
    fig = trajectory_grid([np.zeros((5, 2))] * 7, list(range(6, -1, -1)), n_panels=6)
    assert fig.get_figwidth() <= MAX_WIDTH and sum(ax.get_visible() for ax in fig.axes) == 6
    plt.close(fig)
