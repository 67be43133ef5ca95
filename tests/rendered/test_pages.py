"""Every page of the built book, as a reader sees it in headless Chromium (issue 11 §4).

Run by ``make check-book`` after ``make book`` (``.ci/run`` does both): it sets
``DDPMKIT_BOOK_HTML`` to the built site. Without it (``make test``, before any build) these
tests are skipped, since there is no book to look at yet. What is checked is listed in
``check_pages.py``; each page is one test, so a page that regresses is named.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from check_pages import check_pages, pages

HTML = os.environ.get("DDPMKIT_BOOK_HTML")
pytestmark = pytest.mark.skipif(not HTML, reason="no built book: `make check-book` runs these after `make book`")


def _pages() -> list[str]:
    if not HTML:
        return []
    root = Path(HTML)
    if not (root / "index.html").exists():
        raise RuntimeError(f"DDPMKIT_BOOK_HTML={HTML} holds no built book: run `make book` first")
    return [str(p.relative_to(root)) for p in pages(root)]


@pytest.fixture(scope="module")
def reports() -> dict[str, list[str]]:
    return {r.page: r.problems for r in check_pages(Path(HTML))}


def test_every_chapter_was_built():
    import yaml

    root = Path(__file__).resolve().parents[2]
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert sorted(f"{f}.html" for f in files) == sorted(_pages())


@pytest.mark.parametrize("page", _pages())
def test_page_reads_as_written(reports, page):
    problems = reports[page]
    assert not problems, f"{page}: {len(problems)} problem(s):\n" + "\n".join(problems)
