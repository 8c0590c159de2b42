"""User-facing errors: the CLI prints them as one line and exits non-zero. Anything else is a bug and
keeps its traceback (the server logs it and answers INTERNAL).

On the gRPC server: a `RequestError` (the request is bad) is answered with INVALID_ARGUMENT, a
`PreconditionError` (the server's own configuration cannot serve this request, found when it started)
with FAILED_PRECONDITION; the server keeps serving either way.
"""


class SlimkitError(Exception):
    """An error the user caused (bad path, bad recipe, bad option, bad request)."""


class RequestError(SlimkitError):
    """A bad request: answered with INVALID_ARGUMENT, the server keeps serving."""


class PreconditionError(SlimkitError):
    """A request that this server's configuration cannot serve: answered with FAILED_PRECONDITION."""
