"""User-facing errors.

Raise :class:`AutosegError` for anything caused by the user's input (a missing file, a
corrupt image, a bad option).  The CLI prints its message as one line and exits non-zero,
without a traceback.  The message should name the file, say what is wrong and what to do.
"""


class AutosegError(Exception):
    """An error the user can fix; its message is shown as a single line."""
