"""Running onnx-ir pass sequences with the user's errors brought to the surface.

Passes are composed with onnx-ir's `Sequential` / `PassManager`, which run each
pass's `requires(model)` and `ensures(model)` hooks and wrap any failure in a
`PassError` naming the pass and the passes that ran before it.  That context is
right for a bug; for a problem in the user's input (a `QCompileError` raised
inside a pass) the user should see their one-line message, so `run_passes`
re-raises it, chained to the pass error for `--debug`.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.errors import QCompileError

__all__ = ["run_passes", "user_error_in"]


def user_error_in(error: BaseException) -> QCompileError | None:
    """The first `QCompileError` along the chain of causes of `error`, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, QCompileError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_passes(passes: ir.passes.PassBase, model: ir.Model) -> ir.passes.PassResult:
    """Run `passes` on `model`; a user error raised inside comes out as itself."""
    try:
        return passes(model)
    except ir.passes.PassError as e:
        user = user_error_in(e)
        if user is None:
            raise
        raise type(user)(str(user), exit_code=user.exit_code) from e
