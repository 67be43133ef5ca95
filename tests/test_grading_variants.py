"""A correct answer never loses a point; the usual mistakes always do.

Every question is graded in-process (the grader's own comparison, references and
tolerances) on many grading seeds: each correct way of writing it in
``grading_variants.CORRECT``, and the library's solution, get every case right on every
seed; each mistake in ``grading_variants.WRONG`` loses the same cases on every seed.
Helpers that an answer calls (``uses``) are the references, as in the grader.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from grading_variants import CORRECT, WRONG

from ddpmkit.grading.assignments import ASSIGNMENTS, hidden_cases
from ddpmkit.grading.inside.answers import scalar_types
from ddpmkit.grading.notebooks import assignments_dir, grading_meta, student_notebook
from ddpmkit.grading.spec import call, expected_outputs, judge_with_hint, to_arrays
from ddpmkit.profile import by_profile

# 200 grading seeds (the bar) outside the smoke profile; 5 in smoke, to keep `make test` short
SEEDS = int(os.environ.get("DDPMKIT_GRADING_SEEDS", by_profile(5, 200, 200)))
QUESTIONS = {q.name: (a, q) for a in ASSIGNMENTS.values() for q in a.questions}


def _namespace(a, q, source: str | None) -> dict:
    """The released setup cells, the reference for every helper the answer may call, then
    the answer (the solution's own when ``source`` is None)."""
    nb = student_notebook(assignments_dir() / "source" / a.source, keep_solutions=True)
    ns: dict = {}
    for cell in nb.cells:
        if grading_meta(cell).get("kind") == "setup":
            exec(cell.source, ns)
    for cell in nb.cells:
        if grading_meta(cell).get("id") == q.name and source is None:
            exec(cell.source, ns)
    for helper in q.uses:
        ns[helper] = QUESTIONS[helper][1].reference
    if source is not None:
        exec(source, ns)
    return ns


def _grade(q, fn, case, exp) -> tuple[bool, str]:
    try:
        out = call(q, fn, case)
    except Exception as exc:  # a wrong answer may raise
        return False, f"raised {type(exc).__name__}: {exc}"
    return judge_with_hint(q, exp, to_arrays(out), scalar_types(out))


def test_every_question_has_three_correct_variants_and_a_mistake():
    assert set(CORRECT) == set(QUESTIONS) == set(WRONG)
    assert all(len(v) >= 3 for v in CORRECT.values())


@pytest.mark.parametrize("name", sorted(QUESTIONS))
def test_correct_variants_get_full_marks_on_every_seed(name):
    a, q = QUESTIONS[name]
    answers = [_namespace(a, q, None)[name]] + [_namespace(a, q, src)[name] for src in CORRECT[name]]
    wrong = _namespace(a, q, WRONG[name])[name]
    patterns = set()  # which cases the mistake loses, per seed
    for seed in range(SEEDS):
        lost = []
        for k, case in enumerate(hidden_cases(q, np.random.default_rng(seed))):
            exp = expected_outputs(q, case, seed)
            for v, fn in enumerate(answers):
                ok, msg = _grade(q, fn, case, exp)
                assert ok, f"{name} variant {v} (0 = the solution), seed {seed}, case {k}: {msg}"
            lost.append(not _grade(q, wrong, case, exp)[0])
        patterns.add(tuple(lost))
    assert all(any(p) for p in patterns), f"the mistake in WRONG[{name!r}] lost no point on some seeds: {sorted(patterns)}"
    # hidden cases are stratified (case k is of the same kind for every student, only its values
    # are drawn), so the same mistake loses the same cases whatever the grading seed
    assert len(patterns) == 1, f"the mistake in WRONG[{name!r}] lost different cases on different seeds: {sorted(patterns)}"

