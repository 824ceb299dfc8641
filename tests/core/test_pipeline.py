import onnx_ir as ir
import pytest

from qcompile.errors import QCompileError
from qcompile.pipeline import ReadOnlyPass, run_passes
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
    with pytest.raises(ir.passes.PassError, match="^PostconditionError: graph left inconsistent$"):
        run_passes(ir.passes.Sequential(Noop(), Broken()), tiny())


class NeedsSomething(ir.passes.InPlacePass):
    def requires(self, model):
        raise QCompileError("the model needs something")

    def call(self, model):
        return ir.passes.PassResult(model, False)


class Sneaky(ReadOnlyPass):
    def call(self, model):
        model.graph.remove(list(model.graph)[0], safe=False)
        return ir.passes.PassResult(model, False)


class Crashes(ir.passes.InPlacePass):
    def call(self, model):
        raise KeyError("w")


def test_user_error_in_a_bare_passs_precondition():
    with pytest.raises(QCompileError, match="^the model needs something$"):
        run_passes(NeedsSomething(), tiny())


def test_a_read_only_pass_that_changes_the_model_is_caught():
    with pytest.raises(ir.passes.PassError, match="Sneaky only reads the model, but changed it"):
        run_passes(ir.passes.Sequential(Sneaky()), tiny())


def test_a_bug_reads_as_its_root_cause():
    with pytest.raises(ir.passes.PassError, match="^KeyError: 'w'$"):
        run_passes(ir.passes.Sequential(Noop(), Crashes()), tiny())
