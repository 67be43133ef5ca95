"""Assignments and their grader.

* ``spec``         questions, the argument transport and the comparison rule
* ``tolerance``    float64 references and tolerances from a rounding-error model
* ``assignments``  the four assignments' questions, with the library as reference
* ``notebooks``    solution sources -> student notebooks; reading submissions
* ``sanitize``     the copy of ddpmkit the sandbox sees: the answers withheld
* ``sandbox``      bubblewrap + resource limits around one run; the zygote that forks runs
* ``harness``      the only code that runs inside the sandbox
* ``grader``       ``ddpmkit grade``: batches, gradebook, feedback

Nothing here runs on import.
"""
