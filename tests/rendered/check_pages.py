"""Open every page of the built book in headless Chromium, as a reader would, and report
what a reader would see wrong.

The network is off: every request that leaves the built site is recorded and refused.
Each page is loaded at 1280 px wide, MathJax is awaited, and then the page fails on

1. a request outside the built site (a CDN script, stylesheet, font or image);
2. raw TeX left in the text (a macro such as a backslash-frac, a double dollar), a MathJax
   error, or TeX in the page's title (the browser tab and the navigation);
3. a stderr or warning output block, or a traceback;
4. an image that did not load, or whose alt text is missing or is a file name;
5. a figure shrunk to under ``MIN_SCALE`` of its natural size (its 10 pt tick labels would
   be drawn under 8 px);
6. horizontal overflow: the article wider than its column, or a code, output, math or table
   block that scrolls sideways;
7. a Jupyter widget: it needs a kernel or the widget manager from a CDN, so a page shows a
   static fallback (an image or an embedded animation) instead.

``python tests/rendered/check_pages.py _build/html`` prints one line per problem and exits 1
if there is any; ``tests/rendered/test_pages.py`` runs it under pytest (``make check-book``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

WIDTH, HEIGHT = 1280, 900  # the viewport: a laptop screen
MIN_SCALE = 0.6  # 10 pt at 100 dpi is 13.9 px; at 0.6 of natural size, 8.3 px
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")

# Run in the page after MathJax has typeset it; returns the problems it sees, as strings.
PAGE_CHECKS = r"""
(MIN_SCALE) => {
  const problems = [];
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const short = (s) => s.replace(/\s+/g, ' ').trim().slice(0, 90);
  const where = (el) => {
    const sec = el.closest('section[id]');
    return sec ? '#' + sec.id : 'top';
  };
  // 2. raw TeX outside code and typeset math
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight, .MathJax';
  const macros = 'frac|sqrt|alpha|beta|bar|tilde|hat|epsilon|sigma|mu|theta|nabla|sum|prod|mathcal|mathbb|mathrm|begin|end|left|right'
    + '|cdot|log|int|approx|le|ge|varnothing|operatorname';
  const tex = new RegExp('\\\\(' + macros + ')(?![a-zA-Z])|\\$\\$|\\\\\\(|\\\\\\[');
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement && n.parentElement.closest(skip)) continue;
    if (tex.test(n.textContent)) problems.push(`raw TeX in the text (${where(n.parentElement)}): "${short(n.textContent)}"`);
  }
  for (const e of article.querySelectorAll('mjx-merror, [data-mjx-error]'))
    problems.push(`MathJax error (${where(e)}): ${short(e.getAttribute('data-mjx-error') || e.textContent)}`);
  if (/[\\$]/.test(document.title)) problems.push(`TeX in the page title: "${document.title}"`);
  for (const a of document.querySelectorAll('nav a, .bd-sidebar a'))
    if (/\$|\\[a-zA-Z]/.test(a.textContent)) problems.push(`TeX in the navigation: "${short(a.textContent)}"`);
  // 3. stderr, warnings, tracebacks in outputs
  for (const e of article.querySelectorAll('.output.stderr, .stderr'))
    problems.push(`a stderr output block (${where(e)}): "${short(e.textContent)}"`);
  for (const e of article.querySelectorAll('.cell_output, .output'))
    if (/\b[A-Z]\w*Warning\b|\bwarnings\.warn\b/.test(e.textContent))
      problems.push(`a warning in an output (${where(e)}): "${short(e.textContent)}"`);
  for (const e of article.querySelectorAll('.output, .cell_output, .traceback'))
    if (/Traceback \(most recent call last\)/.test(e.textContent) || e.classList.contains('traceback'))
      problems.push(`a traceback (${where(e)})`);
  // 4-5. images
  for (const img of article.querySelectorAll('img')) {
    const src = img.getAttribute('src') || '';
    const name = src.startsWith('data:') ? 'an inline ' + src.slice(5, src.indexOf(';')) + ' image' : src;
    const alt = (img.getAttribute('alt') || '').trim();
    if (!img.complete || img.naturalWidth === 0) problems.push(`an image that did not load (${where(img)}): ${name}`);
    if (!alt) problems.push(`an image without alt text (${where(img)}): ${name}`);
    else if (/\.(png|jpe?g|svg|gif)$|^_build|\/|^[0-9a-f]{16,}/i.test(alt) || alt === name)
      problems.push(`alt text that is a file name (${where(img)}): "${short(alt)}"`);
    if (img.naturalWidth > 0 && img.clientWidth > 0 && !img.closest('.sd-card, .logo, .navbar-brand')) {
      const scale = img.clientWidth / img.naturalWidth;
      if (scale < MIN_SCALE)
        problems.push(`a figure shown at ${(100 * scale).toFixed(0)}% of its size, text under 8 px (${where(img)}): `
                      + `${img.naturalWidth} px wide for a ${img.clientWidth} px column`);
    }
  }
  // 6. horizontal overflow
  if (article.scrollWidth > article.clientWidth + 1)
    problems.push(`the article overflows its column: ${article.scrollWidth} px in ${article.clientWidth} px`);
  const blocks = article.querySelectorAll('pre, div.output, div.cell_output, mjx-container[display="true"], table');
  for (const b of blocks) {
    if (b.scrollWidth > b.clientWidth + 2 && b.clientWidth > 0) {
      const what = b.tagName === 'PRE' ? 'a code block' : b.tagName === 'TABLE' ? 'a table'
        : b.tagName.startsWith('MJX') ? 'an equation' : 'an output';
      problems.push(`${what} scrolls sideways (${where(b)}): ${b.scrollWidth} px in ${b.clientWidth} px: "${short(b.textContent)}"`);
    }
  }
  // 7. widgets
  for (const w of article.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"], .jupyter-widgets'))
    problems.push(`a Jupyter widget without its static fallback (${where(w)})`);
  return problems;
}
"""


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)


def chromium_path() -> str | None:
    for name in CHROMIUM:
        if path := shutil.which(name):
            return path
    return None


def pages(html_root: Path) -> list[Path]:
    """Every chapter page of the built book (not the search page and Sphinx's index pages)."""
    skip = {"search.html", "genindex.html", "py-modindex.html"}
    found = [p for p in html_root.rglob("*.html") if p.name not in skip and "_static" not in p.parts and "_sources" not in p.parts]
    return sorted(p for p in found if 'http-equiv="Refresh"' not in p.read_text(errors="replace")[:2000])  # not the redirects


def _offline(site: str, outside: list[str]):
    """A route handler: requests inside ``site`` go through; any other is recorded and refused."""

    def route(r):
        url = r.request.url
        if url.startswith((site, "data:", "blob:")):
            r.continue_()
        else:  # 1. the network is off
            outside.append(url)
            r.abort()

    return route


def check_pages(html_root: Path, only: list[str] | None = None) -> list[PageReport]:
    """One report per page of ``html_root`` (all of them, or those whose stem is in ``only``)."""
    from playwright.sync_api import sync_playwright

    html_root = html_root.resolve()
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no Chromium found: install Debian's `chromium` package (apt-get install chromium)")
    site = html_root.as_uri()
    reports = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            for path in pages(html_root):
                if only and path.stem not in only:
                    continue
                report = PageReport(str(path.relative_to(html_root)))
                outside: list[str] = []
                page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})

                page.route("**/*", _offline(site, outside))
                page.goto(path.as_uri(), wait_until="load")
                has_math = page.evaluate("() => document.body.innerHTML.includes('class=\"math') || !!document.querySelector('.math')")
                if page.evaluate("() => typeof MathJax !== 'undefined' && !!MathJax.startup"):
                    page.evaluate("() => MathJax.startup.promise")
                elif has_math:
                    report.problems.append("the page has equations but MathJax did not start")
                report.problems += [f"a request outside the site: {u}" for u in dict.fromkeys(outside)]
                report.problems += page.evaluate(PAGE_CHECKS, MIN_SCALE)
                page.close()
                reports.append(report)
        finally:
            browser.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, nargs="?", default=Path("_build/html"), help="the built book (default: _build/html)")
    ap.add_argument("--page", action="append", help="only this page (its file stem); repeatable")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = ap.parse_args(argv)
    if not (args.html / "index.html").exists():
        print(f"{args.html} holds no built book: run `make book` first", file=sys.stderr)
        return 2
    reports = check_pages(args.html, args.page)
    if args.json:
        print(json.dumps([r.__dict__ for r in reports], indent=1))
    bad = 0
    for r in reports:
        for p in r.problems:
            print(f"{r.page}: {p}")
        bad += len(r.problems)
    print(f"{len(reports)} pages checked, {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
