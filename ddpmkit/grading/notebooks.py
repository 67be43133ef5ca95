"""Solution sources -> student notebooks, and reading whatever a student hands back.

A solution source is a MyST markdown notebook in ``assignments/source/``. Its code cells
carry one tag saying what they are for:

* ``setup``  imports and helpers; the grader runs the released version, not the student's
* ``answer`` the student's work: code between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
  becomes ``# YOUR CODE HERE`` + ``raise NotImplementedError`` in the student version
* ``check``  visible self-checks (``ddpmkit.selfcheck``); the grader skips them
* ``demo``   training runs and figures; the grader skips them

Each generated code cell gets structured metadata, like nbgrader's ``metadata.nbgrader``:
``metadata.grading = {"kind": "answer", "id": "q_sample", "questions": ["q_sample"]}`` (or
``{"kind": "setup", "id": "setup-0"}``), which is how the grader recognises a cell after a
student has moved, copied or retyped it.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
KINDS = ("setup", "answer", "check", "demo")
MAX_NOTEBOOK_BYTES = 20 << 20  # a notebook larger than this is refused unread


def assignments_dir() -> Path:
    """The assignments (``source/*.md`` and the student notebooks): the repository's
    ``assignments/`` folder in a checkout, else the copy inside the installed package
    (``pip install .`` ships it as ``ddpmkit/assignments``)."""
    repo = Path(__file__).resolve().parents[2] / "assignments"
    return repo if (repo / "source").is_dir() else installed_assignments_dir()


def installed_assignments_dir() -> Path:
    """Where a wheel puts the assignments: ``ddpmkit/assignments`` (see pyproject.toml)."""
    return Path(__file__).resolve().parents[1] / "assignments"


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
    return re.findall(r"^(?:def|class)\s+(\w+)", source, re.MULTILINE)


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
    ``metadata.grading`` on every code cell, deterministic cell ids (so the file is reproducible).
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
            meta = {"kind": kind, "id": ",".join(names), "questions": names}
        else:
            meta = {"kind": kind, "id": f"{kind}-{counts.setdefault(kind, 0)}"}
            counts[kind] += 1
        cell.metadata["grading"] = meta
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
    root = assignments_dir()
    if not (root / "source").is_dir():
        raise FileNotFoundError(f"no assignment sources in {root / 'source'}; reinstall ddpmkit (pip install .) or run from a checkout")
    if not check and root == installed_assignments_dir():
        raise ValueError("ddpmkit assign writes the student notebooks of a repository checkout (assignments/*.ipynb); "
                         "this ddpmkit is an installed package: run it from the course repository, or use --check")
    stale = []
    for src in sorted((root / "source").glob("*.md")):
        out, text = release_path(src), notebook_text(student_notebook(src))
        if not out.exists() or out.read_text() != text:
            stale.append(out.name)
            if not check:
                from ..common import atomic_write

                atomic_write(out, lambda f, text=text: f.write(text.encode()))
    return stale


# ---- reading a submission --------------------------------------------------------------------
class NotebookError(Exception):
    """The file is not a notebook the grader can read; the message says why and what to do."""


def grading_meta(cell) -> dict:
    """A cell's structured grading metadata ({} when it has none or it is malformed)."""
    meta = cell.get("metadata", {}).get("grading")
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS or not isinstance(meta.get("id"), str):
        return {}
    qs = meta.get("questions", [])
    return {"kind": meta["kind"], "id": meta["id"], "questions": [q for q in qs if isinstance(q, str)] if isinstance(qs, list) else []}


def _is_python(data: bytes) -> bool:
    """Whether ``data`` is Python source (a script or a jupytext ``# %%`` file), not JSON."""
    try:
        text = data.decode("utf-8")
        ast.parse(as_python(text))
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return bool(text.strip()) and not text.lstrip().startswith(("{", "["))


def read_submission(data: bytes) -> tuple[nbformat.NotebookNode, list[str]]:
    """Parse a submitted notebook's bytes without executing anything. Returns (notebook, notes)."""
    notes: list[str] = []
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise NotebookError(f"the file is {len(data) / 2**20:.0f} MB, over the {MAX_NOTEBOOK_BYTES >> 20} MB limit; "
                            "clear the outputs and submit again")
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise NotebookError("not a notebook: the file is not UTF-8 text (a binary or a corrupted file?)") from None
    except json.JSONDecodeError as exc:
        if _is_python(data):
            raise NotebookError("not a notebook: this is a Python script saved with the .ipynb extension; open the notebook you "
                                "worked in, in Jupyter, and submit that .ipynb file (File > Download)") from None
        truncated = "" if data.rstrip().endswith(b"}") else " The file ends early: was it truncated while saving or uploading?"
        raise NotebookError(f"not a notebook: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}).{truncated}") from None
    except RecursionError:
        raise NotebookError("not a notebook: the JSON is nested too deeply to read") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("nbformat"), int):
        raise NotebookError("not a notebook: there is no 'nbformat' version at the top level")
    major = raw["nbformat"]
    if major < 3:
        raise NotebookError(f"nbformat {major} is too old to read; open the file in Jupyter and save it again (it saves nbformat 4)")
    if major > 4:
        raise NotebookError(f"nbformat {major} is newer than this grader understands (4)")
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    except Exception as exc:  # noqa: BLE001 - nbformat raises many kinds on malformed content (RecursionError included)
        raise NotebookError(f"not a readable notebook: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    if major == 3:
        notes.append("the notebook was in the old nbformat 3; it was converted to nbformat 4 before grading")
    cells = nb.get("cells", [])
    if not isinstance(cells, list):
        raise NotebookError("not a valid notebook: 'cells' is not a list")
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or not isinstance(cell.get("source", ""), str) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise NotebookError(f"not a valid notebook: cell {i} is malformed")
    return nb, notes


@cache
def reference_forms_cached(source_path: Path) -> dict[str, ReferenceForm]:
    return reference_forms(source_path)


@cache
def release_cached(source_path: Path, mtime_ns: int) -> nbformat.NotebookNode:
    """The released student notebook of a source, parsed once per version of the file (read only)."""
    return student_notebook(source_path)


@dataclass
class Plan:
    cells: list[dict]  # {"label", "source", "questions"} in execution order
    notes: dict[str, list[str]]  # per question: what the grader noticed about its cell
    general: list[str]  # notes about the notebook as a whole
    copies: dict[str, str] = field(default_factory=dict)  # question -> why its answer is flagged for the instructor
    forms: dict[str, list] = field(default_factory=dict)  # question -> [normal form, size] of its answer (the class similarity report)


def as_python(source: str) -> str:
    """A cell as the Python that IPython runs (magics and shell escapes become calls), to read
    its definitions here; the sandbox runs the cell itself in IPython."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - a cell IPython cannot transform is read as it is
        return source


# ---- copies of the reference ------------------------------------------------------------------
class _Normalize(ast.NodeTransformer):
    """Local names renamed in order of appearance, docstrings dropped: a rename is no disguise."""

    def __init__(self, local: set[str]):
        self.local, self.names = local, {}

    def _name(self, n: str) -> str:
        if n not in self.local:
            return n
        return self.names.setdefault(n, f"v{len(self.names)}")

    def visit_Name(self, node):
        node.id = self._name(node.id)
        return node

    def visit_arg(self, node):
        node.arg, node.annotation = self._name(node.arg), None
        return node

    def _body(self, node):
        node.name = "f"
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant):
            node.body = node.body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _body


def normalized(node: ast.AST) -> tuple[str, int]:
    """(a normal form of a definition, its size in nodes)."""
    local = {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
    local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    tree = _Normalize(local).visit(ast.parse(ast.unparse(node)).body[0])
    return ast.dump(tree, annotate_fields=False), sum(1 for _ in ast.walk(tree))


def definitions(source: str) -> dict[str, ast.AST]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    # only the definitions are compared: imports, their order and comments never make a copy original
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


MIN_COPY_NODES = 40  # shorter answers are never compared: they have one natural form
LARGE_COPY_NODES = 200  # a normal form this large is not reached independently; smaller ones need a carried comment too


@dataclass(frozen=True)
class ReferenceForm:
    form: str  # the normal form of the solution's definition
    size: int  # its size in syntax-tree nodes
    marks: tuple[str, ...]  # the solution's own comments (not in the released cell), worded enough to be distinctive


def comments(source: str) -> set[str]:
    """The comment texts of a cell, stripped."""
    import io
    import tokenize

    try:
        return {t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(as_python(source)).readline)
                if t.type == tokenize.COMMENT}
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return set()


def _distinctive(comment: str) -> bool:
    return len(comment) >= 12 and len(re.findall(r"[A-Za-z]{2,}", comment)) >= 2


def reference_forms(source_path: Path) -> dict[str, ReferenceForm]:
    """Normal forms of the solution's definitions, by name, with the solution's own comments."""
    solved = student_notebook(source_path, keep_solutions=True)
    released = student_notebook(source_path)
    forms = {}
    for cell, blank in zip(solved.cells, released.cells):
        if grading_meta(cell).get("kind") == "answer":
            marks = tuple(sorted(c for c in comments(cell.source) - comments(blank.source) if _distinctive(c)))
            for name, node in definitions(cell.source).items():
                forms[name] = ReferenceForm(*normalized(node), marks)
    return forms


def copy_flags(defined: dict[str, str], references: dict[str, ReferenceForm]) -> dict[str, str]:
    """Answers that are the reference solution on strong evidence only: the same normal form,
    of a size no independent writer reaches by chance (``LARGE_COPY_NODES``) or carrying one of
    the solution's own comments verbatim. For the instructor's eyes, never the student's."""
    flags = {}
    for q, ref in references.items():
        node = definitions(as_python(defined[q])).get(q) if q in defined else None
        if node is None or ref.size < MIN_COPY_NODES or normalized(node)[0] != ref.form:
            continue
        carried = sorted(set(ref.marks) & comments(defined[q]))
        if ref.size >= LARGE_COPY_NODES or carried:
            why = f"carries the solution's comment {carried[0]!r}" if carried else f"is {ref.size} nodes long"
            flags[q] = f"{q}: its syntax tree, with names normalised, is the reference solution's, and it {why}"
    return flags


def plan_cells(release: nbformat.NotebookNode, submitted: nbformat.NotebookNode, questions: list[str],
               references: dict[str, ReferenceForm] | None = None) -> Plan:
    """What runs in the sandbox: the released setup cells, then the student's answer cells and
    the cells they added, in the student's order. Self-checks and demos are skipped; edits
    to a setup cell are reported (the released version runs); an answer whose normal form
    is the reference solution's, on strong evidence, is flagged for the instructor (``copy_flags``)."""
    notes: dict[str, list[str]] = {q: [] for q in questions}
    general: list[str] = []
    released_setup = {grading_meta(c)["id"]: c.source for c in release.cells if grading_meta(c).get("kind") == "setup"}
    cells = [{"label": f"setup cell {sid}", "source": src, "questions": []} for sid, src in released_setup.items()]
    answer_ids = {grading_meta(c)["id"]: grading_meta(c)["questions"] for c in release.cells if grading_meta(c).get("kind") == "answer"}
    seen: dict[str, int] = {}
    added = 0
    defined: dict[str, str] = {}
    for i, cell in enumerate(submitted.cells):
        meta = grading_meta(cell)
        kind, cid = meta.get("kind"), meta.get("id")
        if kind == "answer" and cid in answer_ids:
            seen[cid] = seen.get(cid, 0) + 1
            if cell.cell_type != "code":
                for q in answer_ids[cid]:
                    if q in notes:
                        notes[q].append(f"its answer cell had been turned into a {cell.cell_type} cell; it was run as code")
            cells.append({"label": f"answer cell {cid} (cell {i})", "source": cell.source, "questions": answer_ids[cid]})
            defined.update({n: cell.source for n in defined_names(cell.source)})
        elif kind == "setup" and cid in released_setup:
            if cell.source.strip() != released_setup[cid].strip():
                general.append(f"setup cell {cid} (cell {i}) was edited; the grader runs the released version, so your edits there "
                               "were not run: put your own code in a new cell")
        elif cell.cell_type == "code" and kind not in KINDS:
            added += 1
            cells.append({"label": f"added cell {i}", "source": cell.source, "questions": []})
            defined.update({n: cell.source for n in defined_names(cell.source)})
    for cid, qs in sorted(answer_ids.items()):
        for q in qs:
            if q not in notes:
                continue
            if cid not in seen:
                notes[q].append("its answer cell was deleted; the question is graded from any other cell that defines it")
            elif seen[cid] > 1:
                notes[q].append(f"its answer cell appears {seen[cid]} times; they ran in order, so the last definition counts")
    if added:
        general.append(f"{added} cell(s) you added were run too, in notebook order")
    answers = {q: src for q, src in defined.items() if q in questions}
    copies = copy_flags(answers, references or {})
    nodes = {q: definitions(as_python(src)).get(q) for q, src in answers.items()}
    forms = {q: list(normalized(node)) for q, node in nodes.items() if node is not None}
    return Plan(cells, notes, general, copies, forms)
