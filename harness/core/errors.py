"""What a user sees when something is wrong: one exception type for their mistakes, one-line warnings,
and URLs with their passwords taken out before they reach any message.

The CLI prints a UserError's message on one line and exits non-zero, without a traceback. Anything
else that escapes is a bug in genbench and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from urllib.parse import unquote, urlsplit, urlunsplit


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


def warn(message: str) -> None:
    """One line on stderr: something the user should know that does not stop the work."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def redact(url: str) -> str:
    """The URL with any password replaced, fit to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str, *urls: str) -> str:
    """A message (an exception's, say) with the passwords of these URLs taken out wherever they appear."""
    for url in urls:
        password = urlsplit(url).password
        if password:  # as written in the URL, and %-decoded as a driver would show it
            for form in {password, unquote(password)}:
                text = text.replace(form, "***")
    return text


def defer_interrupts() -> None:
    """Called where a first Ctrl-C is caught: closing the runs it interrupted must finish, so a second
    Ctrl-C (users press it twice) is reported, not raised; a run left RUNNING in MLflow stays so for
    good. The CLI puts Python's handler back when the command ends (`restore_interrupts`)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def note(signum: int, frame: object) -> None:
        print("\nstill closing the interrupted runs; they are closed in a moment", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, note)


def restore_interrupts() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
