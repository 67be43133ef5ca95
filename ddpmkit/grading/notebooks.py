"""Solution sources -> student notebooks, and reading whatever a student hands back.

A solution source is a MyST markdown notebook in ``assignments/source/``. Its code cells
carry one tag saying what they are for:

* ``setup``  imports and helpers; the grader runs the released version, not the student's
* ``answer`` the student's work: code between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
  becomes ``# YOUR CODE HERE`` + ``raise NotImplementedError`` in the student version
* ``check``  visible self-checks (``ddpmkit.selfcheck``); the grader skips them
* ``demo``   training runs and figures; the grader skips them

Each generated cell gets ``metadata.grade_id`` (``answer:q_sample``, ``setup:0``, ...), which
is how the grader recognises a cell after a student has moved, copied or retyped it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
KINDS = ("setup", "answer", "check", "demo")
MAX_NOTEBOOK_BYTES = 20 << 20  # a notebook larger than this is refused unread


def assignments_dir() -> Path:
    """The repository's ``assignments/`` folder (next to the ddpmkit package)."""
    return Path(__file__).resolve().parents[2] / "assignments"


def strip_solutions(source: str, where: str = "cell", keep: bool = False) -> str:
    """Replace each solution block by ``# YOUR CODE HERE`` and ``raise NotImplementedError``
    (with ``keep``, keep the solution and drop only the markers)."""
    out, inside, indent = [], False, ""
    for n, line in enumerate(source.splitlines(), 1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {n}: {BEGIN} inside another solution block")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            if not keep:
                out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError"]
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}, line {n}: {END} without {BEGIN}")
            inside = False
        elif keep or not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def defined_names(source: str) -> list[str]:
    return re.findall(r"^(?:def|class)\s+(\w+)", source, re.M)


def cell_kind(cell) -> str | None:
    kinds = [t for t in cell.metadata.get("tags", []) if t in KINDS]
    return kinds[0] if kinds else None


def read_source(path: Path):
    """The solution notebook, each code cell checked for exactly one kind tag."""
    import jupytext

    nb = jupytext.read(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell_kind(cell) is None:
            raise ValueError(f"{path.name}: code cell {i} has no tag among {KINDS}; tag it so the grader knows what it is")
    return nb


def student_notebook(path: Path, keep_solutions: bool = False) -> nbformat.NotebookNode:
    """The student version of the solution source at ``path``: solutions removed, no outputs,
    a ``grade_id`` on every code cell, deterministic cell ids (so the file is reproducible).
    With ``keep_solutions`` it is a completed submission instead (tests and benchmarks)."""
    nb = read_source(path)
    counts: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
        if cell.cell_type != "code":
            continue
        kind = cell_kind(cell)
        names = defined_names(strip_solutions(cell.source, f"{path.name} cell {i}"))
        cell.source = strip_solutions(cell.source, f"{path.name} cell {i}", keep=keep_solutions)
        if kind == "answer":
            if not names:
                raise ValueError(f"{path.name} cell {i}: an answer cell must define the function or class it grades")
            gid = "answer:" + ",".join(names)
        else:
            gid = f"{kind}:{counts.setdefault(kind, 0)}"
            counts[kind] += 1
        cell.metadata["grade_id"] = gid
        cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def notebook_text(nb) -> str:
    return nbformat.writes(nb) + "\n"


def release_path(source: Path) -> Path:
    return source.parent.parent / f"{source.stem}.ipynb"


def build_all(check: bool = False) -> list[str]:
    """Write (or with ``check`` only compare) every student notebook; returns the stale ones."""
    stale = []
    for src in sorted((assignments_dir() / "source").glob("*.md")):
        out, text = release_path(src), notebook_text(student_notebook(src))
        if not out.exists() or out.read_text() != text:
            stale.append(out.name)
            if not check:
                from ..checkpoint import _atomic_write

                _atomic_write(out, lambda f: f.write(text.encode()))
    return stale


# ---- reading a submission --------------------------------------------------------------------
class NotebookError(Exception):
    """The file is not a notebook the grader can read; the message says why and what to do."""


def read_submission(path: Path) -> tuple[nbformat.NotebookNode, list[str]]:
    """Parse a submitted notebook without executing anything. Returns (notebook, notes)."""
    notes: list[str] = []
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise NotebookError(f"cannot read the submission: {exc.strerror}") from None
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(f"the file is {size / 2**20:.0f} MB, over the {MAX_NOTEBOOK_BYTES >> 20} MB limit; clear the outputs and submit again")
    data = path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise NotebookError("not a notebook: the file is not UTF-8 text (a binary or a corrupted file?)") from None
    except json.JSONDecodeError as exc:
        truncated = "" if data.rstrip().endswith(b"}") else " The file ends early: was it truncated while saving or uploading?"
        raise NotebookError(f"not a notebook: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}).{truncated}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("nbformat"), int):
        raise NotebookError("not a notebook: there is no 'nbformat' version at the top level")
    major = raw["nbformat"]
    if major < 3:
        raise NotebookError(f"nbformat {major} is too old to read; open the file in Jupyter and save it again (it saves nbformat 4)")
    if major > 4:
        raise NotebookError(f"nbformat {major} is newer than this grader understands (4)")
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    except Exception as exc:  # nbformat raises many kinds on malformed content
        raise NotebookError(f"not a readable notebook: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if major == 3:
        notes.append("the notebook was in the old nbformat 3; it was converted to nbformat 4 before grading")
    for i, cell in enumerate(nb.get("cells", [])):
        if not isinstance(cell.get("source", ""), str) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise NotebookError(f"not a valid notebook: cell {i} is malformed (type {cell.get('cell_type')!r})")
    return nb, notes


@dataclass
class Plan:
    cells: list[dict]  # {"label", "source"} in execution order
    notes: dict[str, list[str]]  # per question: what the grader noticed about its cell
    general: list[str]  # notes about the notebook as a whole


def _clean(source: str) -> str:
    """IPython-only lines (magics, shell escapes) become comments: a plain Python process runs the cells."""
    return "\n".join(f"pass  # removed: {ln.strip()}" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())


def plan_cells(release: nbformat.NotebookNode, submitted: nbformat.NotebookNode, questions: list[str]) -> Plan:
    """What runs in the sandbox: the released setup cells, then the student's answer cells and
    the cells they added, in the student's order. Self-checks and demos are skipped."""
    notes: dict[str, list[str]] = {q: [] for q in questions}
    general: list[str] = []
    cells = [{"label": c.metadata["grade_id"], "source": _clean(c.source)} for c in release.cells
             if c.cell_type == "code" and c.metadata.get("grade_id", "").startswith("setup:")]
    answer_ids = {c.metadata["grade_id"] for c in release.cells if c.metadata.get("grade_id", "").startswith("answer:")}
    seen: dict[str, int] = {}
    added = 0
    for i, cell in enumerate(submitted.cells):
        gid = cell.get("metadata", {}).get("grade_id")
        if isinstance(gid, str) and gid in answer_ids:
            seen[gid] = seen.get(gid, 0) + 1
            if cell.cell_type != "code":
                for q in gid.split(":", 1)[1].split(","):
                    if q in notes:
                        notes[q].append(f"its answer cell had been turned into a {cell.cell_type} cell; it was run as code")
            cells.append({"label": f"{gid} (cell {i})", "source": _clean(cell.source)})
        elif cell.cell_type == "code" and not (isinstance(gid, str) and gid.split(":")[0] in KINDS):
            added += 1
            cells.append({"label": f"added cell {i}", "source": _clean(cell.source)})
    for gid in sorted(answer_ids):
        for q in gid.split(":", 1)[1].split(","):
            if q not in notes:
                continue
            if gid not in seen:
                notes[q].append("its answer cell was deleted; the question is graded from any other cell that defines it")
            elif seen[gid] > 1:
                notes[q].append(f"its answer cell appears {seen[gid]} times; they ran in order, so the last definition counts")
    if added:
        general.append(f"{added} cell(s) you added were run too, in notebook order")
    return Plan(cells, notes, general)
