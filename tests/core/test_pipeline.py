import onnx_ir as ir
import pytest

from qcompile.errors import QCompileError
from qcompile.pipeline import run_passes
from tests.helpers import parse


class BadInput(ir.passes.InPlacePass):
    def call(self, model):
        raise QCompileError("tensor 'x' is bad", exit_code=1)


class Noop(ir.passes.InPlacePass):
    def call(self, model):
        return ir.passes.PassResult(model, False)


class Broken(ir.passes.InPlacePass):
    def call(self, model):
        return ir.passes.PassResult(model, False)

    def ensures(self, model):
        raise ir.passes.PostconditionError("graph left inconsistent")


def tiny():
    return parse('<ir_version: 8, opset_import: ["": 17]> g (float[2] x) => (float[2] y) { y = Relu(x) }')


def test_user_errors_inside_a_sequence_come_out_as_themselves():
    with pytest.raises(QCompileError, match="^tensor 'x' is bad$") as e:
        run_passes(ir.passes.Sequential(Noop(), BadInput()), tiny())
    assert e.value.exit_code == 1
    assert isinstance(e.value.__cause__, ir.passes.PassError)  # onnx-ir's context kept for --debug


def test_broken_invariants_stay_pass_errors():
    with pytest.raises(ir.passes.PassError, match="Broken"):
        run_passes(ir.passes.Sequential(Noop(), Broken()), tiny())
