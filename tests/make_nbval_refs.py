"""Regenerate tests/nbval/*.ipynb: each chapter executed in the smoke profile, keeping only
the outputs of cells tagged ``nbval-check-output`` (the ones nbval compares).

The assignments' solution sources get references too. Run through ``make nbval-refs``
after changing a chapter (``python tests/make_nbval_refs.py STEM...`` for a few); tests/test_book.py fails while a
reference is stale.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "nbval"
CHECK_TAG = "nbval-check-output"


def chapters() -> list[Path]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
    paths = [ROOT / f"{f}.md" for f in files]
    return [p for p in paths if "```{code-cell}" in p.read_text()]


def assignment_sources() -> list[Path]:
    """The assignments' solution notebooks: nbval runs them with the solutions in place."""
    return sorted((ROOT / "assignments" / "source").glob("*.md"))


def code_sources(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def main() -> None:
    if os.environ.get("DDPMKIT_PROFILE", "").lower() != "smoke":
        sys.exit("run with DDPMKIT_PROFILE=smoke (make nbval-refs does)")
    OUT.mkdir(exist_ok=True)
    only = set(sys.argv[1:])  # stems to regenerate (default: all)
    for md in chapters() + assignment_sources():
        if only and md.stem not in only:
            continue
        nb = jupytext.read(md)
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(md.parent)}}).execute()
        for cell in nb.cells:
            # nbval needs the execution counts; only the checked cells keep their outputs
            if cell.cell_type == "code" and CHECK_TAG not in cell.metadata.get("tags", []):
                cell.outputs = []
        nb.cells = [c for c in nb.cells if c.cell_type == "code"]
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, OUT / f"{md.stem}.ipynb")
        print(f"wrote {OUT / (md.stem + '.ipynb')}")


if __name__ == "__main__":
    main()
