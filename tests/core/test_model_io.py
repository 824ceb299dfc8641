import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import pytest

from qcompile.errors import QCompileError
from qcompile.model_io import load_model, save_model, to_graphsurgeon
from tests.helpers import SAMPLES, run

SAMPLE = SAMPLES / "digits_cnn.onnx"


def _feeds(rng):
    return {"input": rng.random((1, 1, 8, 8), dtype=np.float32)}


@pytest.mark.parametrize("kind", ["path", "str", "bytes", "proto", "ir", "graphsurgeon"])
def test_every_source_kind_loads_to_the_same_model(kind, rng):
    proto = onnx.load(str(SAMPLE))
    source = {
        "path": SAMPLE,
        "str": str(SAMPLE),
        "bytes": SAMPLE.read_bytes(),
        "proto": proto,
        "ir": ir.from_proto(proto),
        "graphsurgeon": gs.import_onnx(proto),
    }[kind]
    model = load_model(source)
    feeds = _feeds(rng)
    np.testing.assert_allclose(run(model, feeds)["logits"], run(load_model(SAMPLE), feeds)["logits"], rtol=1e-6)


def test_ir_model_is_copied_not_shared():
    original = ir.from_proto(onnx.load(str(SAMPLE)))
    loaded = load_model(original)
    assert loaded is not original and loaded.graph is not original.graph


def test_graphsurgeon_round_trip(rng):
    graph = to_graphsurgeon(load_model(SAMPLE))
    assert isinstance(graph, gs.Graph)
    assert {n.op for n in graph.nodes} >= {"Conv", "Gemm"}


def test_external_data_round_trip(tmp_path, rng):
    model = load_model(SAMPLE)
    ir.save(model, tmp_path / "ext.onnx", external_data="ext.onnx.data", size_threshold_bytes=0)
    assert (tmp_path / "ext.onnx.data").exists()
    loaded = load_model(tmp_path / "ext.onnx")
    feeds = _feeds(rng)
    np.testing.assert_allclose(run(loaded, feeds)["logits"], run(model, feeds)["logits"], rtol=1e-6)
    out = save_model(loaded, tmp_path / "out" / "again.onnx")
    np.testing.assert_allclose(run(load_model(out), feeds)["logits"], run(model, feeds)["logits"], rtol=1e-6)


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    save_model(load_model(SAMPLE), tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing.onnx", "does not exist"),
        (lambda p: p, "is a folder, not an .onnx file"),
        (lambda p: (p / "junk.onnx").write_bytes(b"\xff\x00garbage" * 10) and p / "junk.onnx", "is not an ONNX model"),
        (lambda p: (p / "empty.onnx").write_bytes(b"") or p / "empty.onnx", "is not an ONNX model: it has no graph"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path, make, message):
    with pytest.raises(QCompileError) as info:
        load_model(make(tmp_path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_truncated_file(tmp_path):
    data = SAMPLE.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(QCompileError, match="is not an ONNX model"):
        load_model(tmp_path / "cut.onnx")


def test_unsupported_source_type():
    with pytest.raises(QCompileError, match="cannot load a model from int; expected a path, bytes"):
        load_model(42)


def test_bad_bytes():
    with pytest.raises(QCompileError, match="the given bytes are not an ONNX model"):
        load_model(b"\x0a\xff\xff\xff")


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "link/secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    (model_dir / "link").symlink_to(tmp_path)
    proto = onnx.load(str(SAMPLE))
    w = proto.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    onnx.save(proto, str(model_dir / "evil.onnx"))
    with pytest.raises(
        QCompileError,
        match=f"tensor 'conv1.w' points at external data '{location}' outside the model's folder; refused",
    ):
        load_model(model_dir / "evil.onnx")


def test_ir_model_with_external_data_is_read_into_the_copy(tmp_path, rng):
    ir.save(load_model(SAMPLE), tmp_path / "ext.onnx", external_data="ext.onnx.data", size_threshold_bytes=0)
    source = ir.load(tmp_path / "ext.onnx")
    loaded = load_model(source)
    assert not any(isinstance(v.const_value, ir.ExternalTensor) for v in loaded.graph.initializers.values())
    feeds = _feeds(rng)
    np.testing.assert_allclose(run(loaded, feeds)["logits"], run(load_model(SAMPLE), feeds)["logits"], rtol=1e-6)


def test_ir_model_with_too_much_external_data_asks_for_the_path(tmp_path, monkeypatch):
    import qcompile.model_io as model_io

    ir.save(load_model(SAMPLE), tmp_path / "ext.onnx", external_data="ext.onnx.data", size_threshold_bytes=0)
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 100)
    with pytest.raises(QCompileError, match="cannot be compiled in memory; pass the path of its .onnx file instead"):
        load_model(ir.load(tmp_path / "ext.onnx"))
