"""Self-checks for the assignment notebooks: ``check(q_sample)`` in a cell.

Each check runs the same question the grader asks (``ddpmkit.grading.assignments``) on a
fixed, visible set of inputs, compares with the library's answer by the grader's rule,
and prints what passed, what failed and a hint why. The grader's hidden checks draw new
inputs at grading time and compare outside the student's kernel.
"""

from __future__ import annotations

import numpy as np

_passed: dict[str, bool] = {}


def _find(name: str):
    from .grading.assignments import ASSIGNMENTS

    for a in ASSIGNMENTS.values():
        for q in a.questions:
            if q.name == name:
                return q
    raise ValueError(f"no assignment has a question named {name!r}; check the function's name")


def check(fn) -> None:
    """Check ``fn`` (a function or class a question asks for, found by its name) and print
    the verdict; ``passed(name)`` tells afterwards whether every case matched."""
    from .grading.inside.answers import array_values, gradient_state, mutated_args, scalar_types
    from .grading.spec import SELF_CHECK_SEED, call, describe_case, expected_outputs, judge_with_hint, materialize, rule_violation, to_arrays

    name = getattr(fn, "__name__", None)
    q = _find(name)
    cases = q.cases(np.random.default_rng(SELF_CHECK_SEED))
    _passed[name] = False
    for k, case in enumerate(cases, 1):
        where = f"{name}, case {k} of {len(cases)}"
        try:
            args = [materialize(a) for a in case.args]
            before = array_values(args)
            out = call(q, fn, case, args=args)
            got, types = to_arrays(out), scalar_types(out)
            broken = rule_violation(q, types, mutated_args(args, before), gradient_state(out, args) if q.grad else None)
        except NotImplementedError:
            print(f"… {name}: not implemented yet (replace `raise NotImplementedError` with your code)")
            return
        except Exception as exc:  # noqa: BLE001 - the student's bug, reported, not raised
            print(f"✗ {where}: raised {type(exc).__name__}: {exc}")
            return
        ok, msg = (False, broken) if broken else judge_with_hint(q, expected_outputs(q, case, seed=k), got, types)
        if not ok:
            print(f"✗ {where}: {msg}\n  inputs: {describe_case(q, case)}")
            return
    print(f"✓ {name}: all {len(cases)} cases match the reference")
    _passed[name] = True


def passed(name: str) -> bool:
    """Whether the last ``check`` of ``name`` in this kernel matched every case."""
    return _passed.get(name, False)


def ready(*names: str) -> bool:
    """True when every named check has passed in this kernel; otherwise say which to finish."""
    missing = [n for n in names if not _passed.get(n)]
    if missing:
        print(f"skipped: first make these checks pass: {', '.join(missing)}")
    return not missing
