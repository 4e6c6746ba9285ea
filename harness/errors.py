"""The one exception type for a user's mistake (bad file, bad option, bad path).

The CLI prints its message on one line and exits non-zero, without a traceback. Anything else
that escapes is a bug in genbench and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""
