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
    """(the question named ``name``, its assignment)."""
    from .grading.assignments import ASSIGNMENTS

    for a in ASSIGNMENTS.values():
        for q in a.questions:
            if q.name == name:
                return q, a
    raise ValueError(f"no assignment has a question named {name!r}; check the function's name")


def _library_codes(paths: tuple[str, ...]) -> dict:
    """The code objects of the library functions an assignment withholds from the grader, by name."""
    import importlib
    import inspect

    codes = {}
    for path in paths:
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            codes[inspect.unwrap(obj).__code__] = path  # the function's own code, not a decorator's shared wrapper
            break
    return codes


def _calls_library(fn_call, codes: dict):
    """Run ``fn_call()`` and say which withheld library function it reached, if any."""
    import sys

    seen = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes and not seen:
            seen.append(codes[frame.f_code])

    sys.setprofile(profile)
    try:
        out = fn_call()
    finally:
        sys.setprofile(None)
    return out, (seen[0] if seen else None)


def check(fn) -> None:
    """Check ``fn`` (a function or class a question asks for, found by its name) and print
    the verdict; ``passed(name)`` tells afterwards whether every case matched."""
    from .grading.inside.answers import array_values, gradient_state, mutated_args, scalar_types
    from .grading.spec import SELF_CHECK_SEED, call, describe_case, expected_outputs, judge_with_hint, materialize, rule_violation, to_arrays

    name = getattr(fn, "__name__", None)
    q, assignment = _find(name)
    codes = _library_codes(assignment.library)
    cases = q.cases(np.random.default_rng(SELF_CHECK_SEED))
    _passed[name] = False
    for k, case in enumerate(cases, 1):
        where = f"{name}, case {k} of {len(cases)}"
        try:
            args = [materialize(a) for a in case.args]
            before = array_values(args)
            out, used = _calls_library(lambda case=case, args=args: call(q, fn, case, args=args), codes)
            if used:
                print(f"✗ {where}: it calls the library's {used}, the function you are asked to write; "
                      "the grader withholds it, so this answer scores 0 there: write it yourself")
                return
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
