"""When to draw progress bars: on a terminal, not in a log file.

``auto`` (the default) draws tqdm bars only when standard error is a terminal; piped to a
file, dwrprune prints one line per sample, stage or epoch instead of carriage-return floods.
"""

from __future__ import annotations

import sys

from ..errors import DwrpruneError

MODES = ("auto", "always", "never")


def resolve_progress(mode: bool | str | None = "auto") -> bool:
    """``True``/``"always"``, ``False``/``"never"``, or ``"auto"``/``None`` (a terminal)."""
    if isinstance(mode, bool):
        return mode
    if mode is None or mode == "auto":
        return sys.stderr.isatty()
    if mode == "always":
        return True
    if mode == "never":
        return False
    raise DwrpruneError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")
