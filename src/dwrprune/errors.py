"""One exception type for every user-facing mistake.

The CLI turns a :class:`DwrpruneError` into a one-line message and exit code 2, so a user
who passes a bad name, a bad number or a bad file never sees a traceback from deep inside
torch. Library callers can catch it like any ``ValueError``.
"""


class DwrpruneError(ValueError):
    """A problem with what the user asked for: says what was wrong and what is accepted."""
