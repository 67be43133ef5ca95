"""The assignments: generated student notebooks, self-checks, and the grader on A2-A5."""

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from ddpmkit import selfcheck
from ddpmkit.grading.assignments import ASSIGNMENTS
from ddpmkit.grading.grader import grade_batch, grade_submission
from ddpmkit.grading.notebooks import assignments_dir, grading_meta, release_path, strip_solutions, student_notebook

SOURCES = {a.key: assignments_dir() / "source" / a.source for a in ASSIGNMENTS.values()}


def test_strip_solutions_replaces_each_block_and_refuses_broken_markers():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"
    assert strip_solutions(src) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError"
    assert strip_solutions(src, keep=True) == "def f(x):\n    return 2 * x"
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")
    with pytest.raises(ValueError, match="without"):
        strip_solutions("x = 1\n### END SOLUTION\n")


@pytest.mark.parametrize("key", sorted(SOURCES))
def test_student_notebook_has_no_solution_and_runs_to_not_implemented(key):
    nb = nbformat.read(release_path(SOURCES[key]), as_version=4)
    text = nbformat.writes(nb)
    assert "BEGIN SOLUTION" not in text and "raise NotImplementedError" in text
    # every question's answer cell is there, tagged for the grader
    answers = [grading_meta(c)["questions"] for c in nb.cells if grading_meta(c).get("kind") == "answer"]
    for q in ASSIGNMENTS[key].questions:
        assert any(q.name in qs for qs in answers), q.name
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(SOURCES[key].parent)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert all(f"… {q.name}: not implemented yet" in printed for q in ASSIGNMENTS[key].questions)
    assert "Traceback" not in printed


def test_self_check_says_what_failed_and_why(capsys):
    def q_sample(x0, t, noise, betas):
        return x0.double()

    selfcheck.check(q_sample)
    out = capsys.readouterr().out
    assert out.startswith("✗ q_sample, case 1 of 3: the output has dtype float64, expected float32")
    assert not selfcheck.passed("q_sample")

    def cosine_betas(T, s=0.008):
        raise ZeroDivisionError("oops")

    selfcheck.check(cosine_betas)
    assert "raised ZeroDivisionError: oops" in capsys.readouterr().out
    assert not selfcheck.ready("cosine_betas") and "skipped: first make these checks pass: cosine_betas" in capsys.readouterr().out


@pytest.mark.parametrize("key", ["a2", "a3", "a4", "a5"])
def test_grader_gives_solutions_full_marks_and_blank_notebooks_zero(key, tmp_path):
    a = ASSIGNMENTS[key]
    paths = {}
    for keep in (True, False):
        paths[keep] = tmp_path / f"{'solved' if keep else 'blank'}.ipynb"
        nbformat.write(student_notebook(SOURCES[key], keep_solutions=keep), paths[keep])
    rows = grade_batch(a, list(paths.values()), tmp_path / "g.csv", jobs=2, progress=False)
    assert (int(rows["solved"]["points"]), int(rows["blank"]["points"])) == (a.max_points, 0), rows
    assert a.max_points == {"a2": 15, "a3": 15, "a4": 9, "a5": 10}[key]


def test_the_library_itself_is_not_an_answer(tmp_path):
    nb = student_notebook(SOURCES["a2"], keep_solutions=True)
    for cell in nb.cells:
        if grading_meta(cell).get("id") == "chamfer":
            cell.source = "from ddpmkit.metrics import chamfer_distance as chamfer"
    path = tmp_path / "copycat.ipynb"
    nbformat.write(nb, path)
    fb = grade_submission(ASSIGNMENTS["a2"], path)
    assert fb["questions"]["chamfer"]["points"] == 0 and fb["points"] == 12
    assert "the library's ddpmkit.metrics.chamfer" in fb["questions"]["chamfer"]["cases"][0]["message"]


def test_every_reference_is_deterministic_given_the_seed():
    """The same seed gives the same cases, references and tolerances (a grade can be reproduced)."""
    import numpy as np

    from ddpmkit.grading.assignments import hidden_cases
    from ddpmkit.grading.spec import expected_outputs

    for a in ASSIGNMENTS.values():
        for q in a.questions:
            one = [expected_outputs(q, c, 5) for c in hidden_cases(q, np.random.default_rng(5))]
            two = [expected_outputs(q, c, 5) for c in hidden_cases(q, np.random.default_rng(5))]
            for e1, e2 in zip(one, two):
                assert all(np.array_equal(x, y) for x, y in zip(e1.values, e2.values)), q.name
                assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(e1.tol, e2.tol)), q.name
    torch.manual_seed(0)


def _kind(v) -> tuple:
    """What kind of input ``v`` is, without its drawn values: type, rank and dtype of an array,
    the named schedule a β array is, the exact value of a string."""
    import numpy as np

    from ddpmkit.grading.assignments import STRATA
    from ddpmkit.grading.spec import AsNumpy, Toy, ToyClassifier
    from ddpmkit.schedules import make_betas

    if isinstance(v, AsNumpy):
        return ("numpy", *_kind(v.array))
    if isinstance(v, np.ndarray):
        names = [n for n in STRATA if v.ndim == 1 and v.dtype == np.float64 and len(v) and np.allclose(v, make_betas(n, len(v)).numpy())]
        return ("array", v.ndim, v.dtype.str, tuple(names))
    if isinstance(v, (Toy, ToyClassifier)):
        return (type(v).__name__, *(None if w is None else w.ndim for w in vars(v).values()))
    if isinstance(v, (list, tuple)):
        return ("list", *(_kind(x) for x in v))
    return (type(v).__name__, v if isinstance(v, str) else None)


@pytest.mark.parametrize("key", sorted(ASSIGNMENTS))
def test_hidden_cases_are_of_the_same_kinds_for_every_student(key):
    import numpy as np

    from ddpmkit.grading.assignments import hidden_cases

    for q in ASSIGNMENTS[key].questions:
        kinds = {tuple(tuple(_kind(a) for a in c.args) for c in hidden_cases(q, np.random.default_rng(seed))) for seed in range(12)}
        assert len(kinds) == 1, f"{q.name}: the kinds of its cases depend on the seed"
