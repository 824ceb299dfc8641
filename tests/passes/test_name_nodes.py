from qcompile.passes.name_nodes import NameNodes
from tests.conftest import parse


def test_every_node_gets_a_unique_name():
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2] x) => (float[2] y) { a = Relu(x)
 b = Relu(a)
 y = Neg(b) }""")
    NameNodes()(model)
    names = [n.name for n in model.graph]
    assert all(names) and len(set(names)) == 3
    assert not NameNodes()(model).modified
