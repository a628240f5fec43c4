"""One exception type for every user-facing mistake.

The CLI turns a :class:`DwrpruneError` into a one-line message and exit code 2, so a user
who passes a bad name, a bad number or a bad file never sees a traceback from deep inside
torch. Library callers can catch it like any ``ValueError``.
"""

import re


class DwrpruneError(ValueError):
    """A problem with what the user asked for: says what was wrong and what is accepted."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def quote_error(e: BaseException, limit: int = 200) -> str:
    """A library's exception as one plain line for a ``dwrprune: error:`` message: no terminal
    colour codes, and none of torch's advice to retry with ``weights_only=False`` (which
    would run code from the file)."""
    text = _ANSI.sub("", str(e)).strip()
    if "WeightsUnpickler error:" in text:  # torch's refusal: keep only the reason
        text = "refused by weights-only unpickling: " + " ".join(
            text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
            .split())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "weights_only" not in ln] or [type(e).__name__]
    return lines[0][:limit]
