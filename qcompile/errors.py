"""The one exception type qcompile raises for problems the user can fix.

`QCompileError` carries an exit code for the CLI: 2 for bad input (the default),
1 for a result that fails its checks (`qcompile.verdict`).
"""

from __future__ import annotations

__all__ = ["QCompileError", "QCompileWarning", "BAD_INPUT", "FAILED_CHECK", "first_line"]

BAD_INPUT = 2
FAILED_CHECK = 1  # a result that collapsed, quantized nothing or missed its budget


class QCompileError(Exception):
    """A problem with the user's input or a result the user must act on.

    The message is one line that names the tensor, node, file or option at fault,
    the bad value and what is allowed.
    """

    def __init__(self, message: str, *, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # survives the trip back from a worker process
        return _rebuild, (str(self), self.exit_code)


class QCompileWarning(UserWarning):
    """A result the user should look at although the compile finished (the CLI prints it as
    `qcompile: warning: ...`)."""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), else `default`
    (the exception's type name when not given)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else (type(error).__name__ if default is None else default)


def _rebuild(message: str, exit_code: int) -> QCompileError:
    return QCompileError(message, exit_code=exit_code)
