"""Assignments and their grader.

* ``spec``         questions, the argument transport and the comparison rule
* ``assignments``  the four assignments' questions, with the library as reference
* ``notebooks``    solution sources -> student notebooks; reading submissions
* ``sandbox``      bubblewrap + resource limits around one run
* ``harness``      the only code that runs inside the sandbox
* ``grader``       ``ddpmkit grade``: batches, gradebook, feedback

Nothing here runs on import.
"""
