"""Shared check for float-preserving passes: same numbers on ORT, valid model, idempotent."""

from __future__ import annotations

import numpy as np

from tests.helpers import check, copy, run


def assert_equivalent_and_idempotent(pass_factory, model, feeds, *, rtol=1e-5, atol=1e-6):
    before = copy(model)
    result = pass_factory()(model)
    assert result.model is model
    check(model)
    want, got = run(before, feeds), run(model, feeds)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
    again = pass_factory()(model)
    assert not again.modified, "a second run must report no change"
    return result
