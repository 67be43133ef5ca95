"""``python -m ddpmkit.grading.inside REQ_FD RES_FD`` (one run) or ``--zygote CTL_FD``."""

import sys

from .runloop import main, zygote_main

if sys.argv[1] == "--zygote":
    zygote_main(int(sys.argv[2]))
else:
    main(int(sys.argv[1]), int(sys.argv[2]))
