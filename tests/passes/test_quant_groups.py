"""Quantization groups (passes.quant_groups): which tensors stay quantized when groups go float
agrees with what `assign_specs` then plans."""

from __future__ import annotations

import numpy as np

from qcompile.passes.quant_groups import quant_groups, quantized_tensors_when
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets import get_target
from tests.passes.test_assign_specs import _matmul_then
from tests.support.quant_models import planned


def test_a_soft_output_is_quantized_only_while_an_int8_group_reads_it(rng):
    model = _matmul_then(rng, "Add")
    samples = [{"x": rng.normal(size=(1, 6, 16)).astype(np.float32)} for _ in range(8)]
    naive, _ = planned(model, samples)
    groups = quant_groups(model, naive, get_target("ort-cpu"))
    assert [(g.name, g.soft_output) for g in groups] == [("mm", "h"), ("bias", None)]
    assert "h" in quantized_tensors_when(groups, set())
    searched = quantized_tensors_when(groups, {"bias"})
    planned_so, _ = planned(model, samples, pinned=QuantPlan(nodes={"bias": NodeDecision("float", "test")}))
    assert searched == {t for t, s in planned_so.tensors.items() if s.dtype != "int32"} == {"x", "w"}
