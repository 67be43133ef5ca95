"""The page checker itself: on a small site with one of each fault it names every fault, and
on a clean page it names none (so a green ``make check-book`` means something)."""

from __future__ import annotations

import importlib.util

import pytest
from check_pages import check_pages, chromium_path

pytestmark = pytest.mark.skipif(not chromium_path() or importlib.util.find_spec("playwright") is None,
                                reason="needs Chromium (apt-get install chromium) and playwright; .ci/run installs both")

PAGE = """<!doctype html><html><head><title>{title}</title>{head}</head><body>
<article class="bd-article" style="width: 688px">{body}</article></body></html>"""


def _png(path, width: int) -> None:
    from PIL import Image

    Image.new("RGB", (width, 40), "white").save(path)


def test_each_fault_is_named_and_a_clean_page_passes(tmp_path):
    _png(tmp_path / "wide.png", 2000)
    _png(tmp_path / "fine.png", 600)
    bad = PAGE.format(title="The $x_t$ page", head='<script src="https://cdn.example.org/mathjax.js"></script>', body="""
<section id="faults">
<p>The posterior is \\frac{a}{b} in raw form.</p>
<div class="cell_output"><div class="output stderr"><pre>something on stderr</pre></div></div>
<div class="cell_output"><div class="output text_plain"><pre>/x.py:3: DeprecationWarning: old</pre></div></div>
<div class="cell_output"><div class="output text_plain"><pre>Traceback (most recent call last):</pre></div></div>
<img src="missing.png" alt="a figure that is not there">
<img src="fine.png">
<img src="fine.png" alt="_images/0123abcd.png">
<img src="wide.png" alt="a figure far too wide for its column" style="width: 688px">
<pre style="overflow-x: auto">""" + "x = 1  " * 200 + """</pre>
<script type="application/vnd.jupyter.widget-view+json">{"model_id": "1"}</script>
</section>""")
    (tmp_path / "bad.html").write_text(bad)
    good = PAGE.format(title="A clean page", head="", body="""<section id="ok"><p>Plain text.</p>
<img src="fine.png" alt="a white strip that fits its column"><pre>short = 1</pre></section>""")
    (tmp_path / "good.html").write_text(good)
    reports = {r.page: r.problems for r in check_pages(tmp_path)}
    assert reports["good.html"] == []
    found = "\n".join(reports["bad.html"])
    for words in ["a request outside the site: https://cdn.example.org/mathjax.js", "raw TeX in the text (#faults)",
                  "TeX in the page title", "a stderr output block", "a warning in an output", "a traceback",
                  "an image that did not load (#faults): missing.png", "an image without alt text (#faults): fine.png",
                  'alt text that is a file name (#faults): "_images/0123abcd.png"', "a figure shown at 34% of its size",
                  "a code block scrolls sideways", "a Jupyter widget without its static fallback"]:
        assert words in found, f"not named: {words}\n{found}"
