"""Submissions made from the solution sources, and reading their feedback (the grader's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from ddpmkit.grading.assignments import ASSIGNMENTS
from ddpmkit.grading.notebooks import assignments_dir, grading_meta, student_notebook
from ddpmkit.grading.sandbox import bwrap_path

needs_bwrap = pytest.mark.skipif(not bwrap_path() and not os.environ.get("CI"), reason="bubblewrap is not installed (CI installs it)")
MODE = "bwrap" if bwrap_path() else "auto"


def notebook(tmp: Path, key: str, student: str, replace: dict | None = None, add: list[str] = (), edit=None) -> Path:
    """The solved notebook of ``key`` with answers replaced and cells added."""
    nb = student_notebook(assignments_dir() / "source" / ASSIGNMENTS[key].source, keep_solutions=True)
    for cell in nb.cells:
        for name, code in (replace or {}).items():
            if grading_meta(cell).get("id") == name:
                cell.source = code
    nb.cells += [nbformat.v4.new_code_cell(src) for src in add]
    if edit:
        edit(nb)
    path = tmp / key / f"{student}.ipynb"
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, path)
    return path


def pts(fb) -> dict:
    return {q: v["points"] for q, v in fb["questions"].items()}


def msgs(fb, q) -> str:
    return " | ".join(c["message"] for c in fb["questions"][q]["cases"]) + " | " + " | ".join(fb["questions"][q]["notes"])
