import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.errors import QCompileError
from qcompile.plan import NodeDecision, QuantPlan, QuantSpec

scales = st.floats(1e-8, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def specs(draw):
    dtype = draw(st.sampled_from(["int8", "uint8", "int16", "int32", "float32"]))
    if dtype == "float32":
        return QuantSpec("float32")
    n = draw(st.integers(1, 4))
    from qcompile.quant_math import INT_RANGES

    r = INT_RANGES[dtype]
    zps = draw(st.lists(st.integers(r.qmin, r.qmax), min_size=n, max_size=n))
    axis = draw(st.integers(0, 3)) if n > 1 else draw(st.none() | st.integers(0, 3))
    return QuantSpec(
        dtype, tuple(draw(st.lists(scales, min_size=n, max_size=n))), tuple(zps), axis, symmetric=draw(st.booleans())
    )


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    tensors=st.dictionaries(names, specs(), max_size=6),
    nodes=st.dictionaries(names, st.builds(NodeDecision, st.sampled_from(["int8", "float"]), names), max_size=4),
)
def test_json_round_trip(tensors, nodes):
    plan = QuantPlan(tensors=tensors, nodes=nodes, meta={"target": "ort-cpu"})
    again = QuantPlan.from_json(plan.to_json())
    assert again.tensors == plan.tensors and again.nodes == plan.nodes and again.meta == plan.meta


def test_save_load(tmp_path):
    plan = QuantPlan(tensors={"x": QuantSpec("uint8", (0.1,), (3,))})
    plan.save(tmp_path / "plan.json")
    assert QuantPlan.load(tmp_path / "plan.json").tensors["x"].zero_point_array() == np.uint8(3)


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 99}', "plan version 99 is not supported"),
        ('{"tensors": []}', "'tensors' and 'nodes' must be objects"),
        ('{"tensors": {"x": {"dtype": "int7"}}}', "tensor 'x': unknown dtype 'int7'; known: int8"),
        ('{"tensors": {"x": {"scale": [1.0]}}}', "tensor 'x': missing field 'dtype'"),
        ('{"tensors": {"x": {"dtype": "int8", "scale": [-1.0]}}}', "scale must be positive and finite"),
        (
            '{"tensors": {"x": {"dtype": "int8", "scale": [1.0], "zero_point": [300]}}}',
            "zero_point 300 is outside the int8 range",
        ),
        ('{"tensors": {"x": {"dtype": "int8", "scale": [1.0, 2.0], "zero_point": [0, 0]}}}', "2 scales need an axis"),
        (
            '{"tensors": {"x": {"dtype": "int8", "scale": [1.0, 2.0], "zero_point": [0], "axis": 0}}}',
            "scale has 2 values but zero_point has 1",
        ),
        ('{"tensors": {"x": {"dtype": "int8", "colour": 1}}}', "unknown field(s) ['colour']"),
        ('{"tensors": {"x": {"dtype": "float32", "scale": [1.0]}}}', "dtype float32 is not quantized"),
        ('{"tensors": {"x": {"dtype": "int8", "zero_point": [1]}}}', "a spec with a zero_point needs a scale too"),
        (
            '{"tensors": {"x": {"dtype": "int8", "scale": [1.0], "block_size": 0, "axis": 0}}}',
            "block_size must be positive",
        ),
        (
            '{"nodes": {"conv": {"precision": "int3"}}}',
            "node 'conv': unknown precision 'int3'; known: int8, int16, float",
        ),
        ('{"nodes": {"conv": "int8"}}', "node 'conv' needs an object with a 'precision' field"),
        ('{"meta": null}', "'meta' must be an object, got null"),
        (
            '{"tensors": {"x": {"dtype": "int8", "scale": [1.0], "axis": "0"}}}',
            "field 'axis' must be an integer or null",
        ),
        ('{"tensors": {"x": {"dtype": "int8", "scale": "big"}}}', "field 'scale' must be a number, a list of numbers"),
        (
            '{"tensors": {"x": {"dtype": "int8", "scale": 1.0, "zero_point": 0.5}}}',
            "field 'zero_point' must be an integer",
        ),
        ('{"tensors": {"x": {"dtype": ["int8"]}}}', "field 'dtype' must be a string"),
        ('{"tensors": {"x": {"dtype": "int8", "symmetric": 1}}}', "field 'symmetric' must be true or false"),
        (
            '{"nodes": {"conv": {"precision": "int8", "score": "high"}}}',
            "node 'conv': field 'score' must be a number or null",
        ),
        ('{"nodes": {"conv": {"precision": "int8", "why": "x"}}}', "node 'conv': unknown field(s) ['why']"),
    ],
)
def test_bad_plans_are_rejected_with_a_reason(text, message):
    with pytest.raises(QCompileError, match=None) as info:
        QuantPlan.from_json(text, source="plan.json")
    assert message in str(info.value)
    assert str(info.value).startswith("plan.json")


def test_missing_plan_file(tmp_path):
    with pytest.raises(QCompileError, match="cannot read plan file"):
        QuantPlan.load(tmp_path / "nope.json")


def test_spec_without_scale_is_a_request():
    spec = QuantSpec.from_dict({"dtype": "uint16"})
    assert (
        not spec.is_resolved and json.loads(QuantPlan(tensors={"t": spec}).to_json())["tensors"]["t"]["scale"] is None
    )


def test_non_finite_meta_is_written_as_strict_json():
    plan = QuantPlan(meta={"search": {"all_int8": math.inf, "table": [{"gain": -math.inf, "only": math.nan}]}})
    data = json.loads(plan.to_json(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert data["meta"]["search"] == {"all_int8": "inf", "table": [{"gain": "-inf", "only": "nan"}]}
