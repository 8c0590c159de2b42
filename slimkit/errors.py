"""User-facing errors: the CLI prints them as one line and exits non-zero; the server answers them
with INVALID_ARGUMENT. Anything else is a bug and keeps its traceback."""


class SlimkitError(Exception):
    """An error the user caused (bad path, bad recipe, bad request)."""
