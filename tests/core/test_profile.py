"""ORT's profile, read back as our node names."""

import numpy as np

from qcompile.profile import node_times_us, our_name
from tests.helpers import parse


def test_ort_kernel_names_lead_back_to_our_nodes():
    producers = {"conv_out": "Conv@6", "h": "fc1"}
    nodes = frozenset(producers.values())
    assert our_name("Conv@6_token_39") == "Conv@6"  # a fused QDQ kernel
    assert our_name("conv_out_nchwc", producers, nodes) == "Conv@6"  # the blocked-layout float Conv
    assert our_name("fc1/MatMulAddFusion", producers, nodes) == "fc1"
    assert our_name("/model/layer.0/MatMul", producers, nodes) == "/model/layer.0/MatMul"  # a name with slashes
    assert our_name("ReorderOutput", producers, nodes) == "ReorderOutput"


def test_every_kernel_of_a_small_model_is_timed_under_its_node_name(rng):
    model = parse(
        """<ir_version: 10, opset_import: ["": 21]>
g (float[1, 64] x) => (float[1, 64] y) <float[64, 64] w = {...}> {
    m = MatMul(x, w)
    y = Relu(m)
}""".replace("{...}", "{" + ", ".join("0.5" for _ in range(64 * 64)) + "}")
    )
    for node, name in zip(model.graph, ("mm", "relu"), strict=True):
        node.name = name
    times = node_times_us(model, {"x": rng.normal(size=(1, 64)).astype(np.float32)}, runs=5, warmup=1)
    assert set(times) <= {"mm", "relu"} and times and all(t > 0 for t in times.values())
