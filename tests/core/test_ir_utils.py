import numpy as np

from qcompile.ir_utils import FreshNames, add_initializer, unique_name, values_by_name
from tests.helpers import parse

TEXT = """<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4] x) => (float[1, 4] y) { a = Relu(x) y = Relu(a) }"""


def test_fresh_names_avoid_values_nodes_and_each_other():
    model = parse(TEXT)
    model.graph.node(0).name = "n"
    fresh = FreshNames(model.graph)
    assert [fresh("a"), fresh("a"), fresh("n"), fresh("new")] == ["a_1", "a_2", "n_1", "new"]
    assert unique_name(model.graph, "a") == "a_1"  # one-off: only the graph counts


def test_add_initializer_takes_a_fresh_name():
    model = parse(TEXT)
    fresh = FreshNames(model.graph)
    first = add_initializer(model.graph, "x", np.ones(2, np.float32), fresh)
    second = add_initializer(model.graph, "x", np.ones(2, np.float32), fresh)
    assert (first.name, second.name) == ("x_1", "x_2")
    assert set(values_by_name(model.graph)) >= {"x_1", "x_2"}
