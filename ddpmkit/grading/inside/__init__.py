"""What runs inside the sandbox, beside a student's notebook: this folder is copied whole into
every sandbox and imports only the standard library, NumPy, PyTorch and IPython.

* ``wire``     frames and the one codec of values: the only parser of untrusted bytes
* ``toys``     the stand-in networks that checks pass to students' functions
* ``answers``  calling an answer and reading what it returned (self-checks use these too)
* ``confine``  seccomp, rlimits, namespaces, a private /dev, no inherited descriptors
* ``runloop``  the run: the notebook's cells in IPython, then one call at a time; the zygote

It decides nothing: the grader, outside, compares what it sends back with the reference.
"""
