"""The copy of ``ddpmkit`` that the sandbox sees: the answers are not in it.

A student may use the library's helpers (``TimeEmbedding``, ``load_dataset``, ``emd``...),
but not the library's own answer to a question they are graded on, by any path: an
alias, a lambda or ``def`` wrapper, ``importlib``, ``getattr`` on strings,
``functools.partial``, a subclass, a copied ``__code__`` or the source file read and
executed. So the sandbox does not get the real package: it gets a copy in which the body
of every function an assignment lists in ``Assignment.library`` is replaced by a
``raise`` saying "this is the function you are asked to write". Everything else in the
copy is the library itself. Of ``grading/`` only ``grading/inside`` is there: the questions are not.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
import weakref
from functools import cache
from pathlib import Path

import ddpmkit

PACKAGE = Path(ddpmkit.__file__).resolve().parent
MESSAGE = "this is the library's {name}, the function you are asked to write: write it yourself"


class _Blank(ast.NodeTransformer):
    def __init__(self, targets: dict[str, str]):
        self.targets, self.scope, self.done = targets, [], set()

    def _visit_def(self, node):
        qual = ".".join(self.scope + [node.name])
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()
        if qual in self.targets:
            self.done.add(qual)
            raise_ = ast.parse(f"raise NotImplementedError({MESSAGE.format(name=self.targets[qual])!r})").body[0]
            node.body = [raise_]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_def

    def visit_ClassDef(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()
        return node


def _split(path: str) -> tuple[Path, str]:
    """``ddpmkit.unet.ResBlock.forward`` -> (unet.py, ``ResBlock.forward``)."""
    parts = path.split(".")
    if parts[0] != "ddpmkit":
        raise ValueError(f"{path}: only ddpmkit's own functions can be withheld")
    for i in range(len(parts), 1, -1):
        f = PACKAGE.joinpath(*parts[1:i]).with_suffix(".py")
        if f.is_file():
            return f, ".".join(parts[i:])
    raise ValueError(f"{path}: no module of ddpmkit holds it")


def blank_source(source: str, qualnames: dict[str, str], where: str) -> str:
    """``source`` with the bodies of ``qualnames`` (qualname -> dotted name) replaced by a raise."""
    tree = ast.parse(source)
    t = _Blank(qualnames)
    tree = t.visit(tree)
    missing = set(qualnames) - t.done
    if missing:
        raise ValueError(f"{where}: no function {', '.join(sorted(missing))} to withhold; update Assignment.library")
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


# Never copied into the sandbox: the grader itself, and the solution sources that an installed
# package carries in ddpmkit/assignments.
NOT_IN_SANDBOX = ("__pycache__", "grading", "assignments")

@cache
def sanitized_root(library: tuple[str, ...]) -> Path:
    """A folder holding ``ddpmkit/``: the withheld copy, with ``grading/inside`` (the run) and
    nothing else of ``grading/``; made once per
    process and per set of withheld functions, removed when the process exits."""
    root = Path(tempfile.mkdtemp(prefix="ddpmkit-sandbox-"))
    weakref.finalize(sanitized_root, shutil.rmtree, root, True)
    pkg = root / "ddpmkit"

    def link_or_copy(src, dst):
        try:
            Path(dst).hardlink_to(src)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns(*NOT_IN_SANDBOX), copy_function=link_or_copy)
    (pkg / "grading").mkdir()
    (pkg / "grading" / "__init__.py").write_text('"""In the sandbox only what runs there: ``inside``, copied whole."""\n')
    shutil.copytree(PACKAGE / "grading" / "inside", pkg / "grading" / "inside", ignore=shutil.ignore_patterns("__pycache__"),
                    copy_function=link_or_copy)
    by_file: dict[Path, dict[str, str]] = {}
    for path in library:
        f, qual = _split(path)
        by_file.setdefault(f, {})[qual] = path
    for f, quals in by_file.items():
        out = pkg / f.relative_to(PACKAGE)
        out.unlink()  # a hard link: never write through it
        out.write_text(blank_source(f.read_text(), quals, str(f)))
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root
