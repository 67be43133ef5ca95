"""The book's size profile: one environment variable, read by one function.

``DDPMKIT_PROFILE`` selects how much compute every chapter spends:

* ``smoke``: CI. Every chapter runs in about a minute on 2 CPU cores; results are
  only good enough to show that the code runs.
* ``quick``: the default of ``make book``. The whole book runs in under 15 minutes
  on a 2-core laptop and the figures show the real effects.
* ``full``: paper-size runs (long training, many steps); for a GPU or a patient user.
"""

from __future__ import annotations

import os
from typing import Literal

Profile = Literal["smoke", "quick", "full"]
PROFILES: tuple[Profile, ...] = ("smoke", "quick", "full")
ENV_VAR = "DDPMKIT_PROFILE"


def get_profile(default: Profile = "quick") -> Profile:
    """Return the active profile from ``$DDPMKIT_PROFILE`` (any case), else ``default``.

    Raises:
        ValueError: the variable holds something other than smoke, quick or full.
    """
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if not raw:
        return default
    if raw not in PROFILES:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a profile; "
            f"set it to one of {', '.join(PROFILES)} (any case) or unset it for {default!r}."
        )
    return raw  # type: ignore[return-value]


def by_profile(smoke, quick, full, profile: Profile | None = None):
    """Pick the value for the active profile: ``by_profile(200, 3000, 20000)``."""
    p = profile or get_profile()
    return {"smoke": smoke, "quick": quick, "full": full}[p]
