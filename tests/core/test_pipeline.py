import onnx_ir as ir
import pytest

from qcompile.pipeline import CompilePass, Pipeline, PipelineError
from tests.conftest import parse


class Provides(CompilePass):
    provides = ("a",)

    def call(self, model):
        return ir.passes.PassResult(model, False)


class NeedsA(CompilePass):
    requires = ("a",)

    def call(self, model):
        return ir.passes.PassResult(model, False)


class SneakyAnalysis(CompilePass):
    mutates = False

    def call(self, model):
        model.graph.remove(list(model.graph)[0], safe=False)
        return ir.passes.PassResult(model, False)


def tiny():
    return parse('<ir_version: 8, opset_import: ["": 17]> g (float[2] x) => (float[2] y) { y = Relu(x) }')


def test_missing_fact_is_named_with_its_provider():
    with pytest.raises(PipelineError, match="pass NeedsA requires fact 'a': Provides provides it but runs later"):
        Pipeline([NeedsA(), Provides()])
    with pytest.raises(PipelineError, match="no pass in the pipeline provides it"):
        Pipeline([NeedsA()])


def test_given_facts_and_order():
    Pipeline([NeedsA()], given=["a"])(tiny())
    Pipeline([Provides(), NeedsA()])(tiny())


def test_analysis_that_mutates_is_caught():
    with pytest.raises(PipelineError, match="analysis pass SneakyAnalysis changed the graph"):
        Pipeline([SneakyAnalysis()])(tiny())
