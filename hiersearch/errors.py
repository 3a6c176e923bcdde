"""The one exception type for bad user input.

Anything raised as `InputError` reaches the user as a single line and exit code 2 (see
`cli.main`); everything else is an internal error (exit code 1, with a traceback).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: a file, a line in it, an option or a key.

    The message must name where the problem is (file and line, option or key) so that the
    user can fix it without reading a traceback.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message  # without `where`: for a caller that re-words or re-places it
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)

    @classmethod
    def from_os_error(cls, exc: OSError, where: str, action: str = "cannot write") -> InputError:
        """An `OSError` met on a path the user gave (`where`: the option or file), in one line:
        "--storage: cannot write: Permission denied (runs/x)"."""
        reason = exc.strerror or str(exc) or type(exc).__name__
        named = f" ({exc.filename})" if exc.filename and str(exc.filename) != where else ""
        return cls(f"{action}: {reason}{named}", where=where)
