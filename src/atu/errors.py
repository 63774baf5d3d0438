"""The one exception type for mistakes a user can fix: the CLI prints its message as one line and exits non-zero."""

import difflib


class AtuError(Exception):
    """A user-facing error. The message names the problem and the fix, in one line."""


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
