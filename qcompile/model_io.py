"""Loading and saving models at the API boundary.

Inside qcompile a model is an `onnx_ir.Model`; protobuf appears only here and
where a runtime session is created.  `load_model` accepts a path, raw bytes,
an `onnx.ModelProto`, an `onnx_ir.Model` or an `onnx_graphsurgeon.Graph`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from qcompile.atomic import StagedFolder, atomic_write
from qcompile.errors import QCompileError
from qcompile.ir_utils import external_tensors

__all__ = [
    "load_model",
    "save_model",
    "check_serialised",
    "model_to_bytes",
    "proto_without_value_info",
    "weights_nbytes",
    "to_graphsurgeon",
    "ModelSource",
]

ModelSource = Any  # str | os.PathLike | bytes | onnx.ModelProto | ir.Model | onnx_graphsurgeon.Graph
SOURCE_BYTES_KEY = "qcompile.source_bytes"
EXTERNAL_DATA_KEY = "qcompile.external_data"  # the input kept its weights in external data
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # leave headroom below protobuf's 2 GB limit


def _from_proto(proto: onnx.ModelProto, where: str) -> ir.Model:
    if not proto.HasField("graph"):
        raise QCompileError(f"{where} is not an ONNX model: it has no graph")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises several types on malformed protos
        raise QCompileError(f"{where} could not be read as an ONNX model: {e}") from e
    for name, init in model.graph.initializers.items():
        if init.const_value is not None and init.const_value.dtype == ir.DataType.UNDEFINED:
            raise QCompileError(f"{where}: initializer {name!r} has no data type")
    return model


def _external_locations(proto: onnx.ModelProto):
    tensors = list(proto.graph.initializer)
    tensors += [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            yield t.name, entries.get("location", "")


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data outside the model's folder (absolute, '..', or a symlink out)."""
    folder = path.parent.resolve()
    for name, location in _external_locations(proto):
        target = (path.parent / location).resolve()
        if not location or Path(location).is_absolute() or folder not in target.parents:
            raise QCompileError(
                f"{path}: tensor {name!r} points at external data {location!r} outside the model's folder; refused"
            )


def _load_path(path: Path) -> ir.Model:
    if not path.exists():
        raise QCompileError(f"model file {path} does not exist")
    if path.is_dir():
        raise QCompileError(f"model path {path} is a folder, not an .onnx file")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as e:
        raise QCompileError(f"{path} is not an ONNX model (protobuf parse failed: {e})") from e
    except OSError as e:
        raise QCompileError(f"cannot read model file {path}: {e.strerror}") from e
    if not proto.HasField("graph"):
        raise QCompileError(f"{path} is not an ONNX model: it has no graph")
    _check_external_locations(proto, path)
    model = _from_proto(proto, str(path))
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    locations = {loc for _, loc in _external_locations(proto)}
    if locations:
        model.meta[EXTERNAL_DATA_KEY] = True
    try:
        # what the float model takes on disk as the user has it, for the card's size ratio
        model.meta[SOURCE_BYTES_KEY] = path.stat().st_size + sum(
            (path.parent / loc).stat().st_size for loc in locations
        )
        if weights_nbytes(model) <= EXTERNAL_DATA_THRESHOLD:
            # small enough for one protobuf: read external data now, so that the model
            # serialises to self-contained bytes for runtime sessions
            ir.external_data.load_to_model(model)
    except OSError as e:
        raise QCompileError(f"{path}: cannot read its external data: {e}") from e
    return model


def _copy_ir_model(source: ir.Model) -> ir.Model:
    """A private copy (compiling mutates), with external data read in: an in-memory model has
    no file beside which the checker and runtime sessions could find it."""
    copy = ir.from_proto(ir.to_proto(source))
    folders = {t.base_dir for t in external_tensors(source)}
    if not folders:
        return copy
    if len(folders) > 1 or weights_nbytes(source) > EXTERNAL_DATA_THRESHOLD:
        raise QCompileError(
            "an onnx_ir.Model with over 1.8 GB of external data cannot be compiled in memory; "
            "pass the path of its .onnx file instead"
        )
    ir.external_data.set_base_dir(copy.graph, folders.pop())
    try:
        ir.external_data.load_to_model(copy)
    except OSError as e:
        raise QCompileError(f"cannot read the model's external data: {e}") from e
    copy.meta[EXTERNAL_DATA_KEY] = True
    return copy


def load_model(source: ModelSource) -> ir.Model:
    """Load any supported model source into an `onnx_ir.Model` the caller may mutate."""
    if isinstance(source, ir.Model):
        return _copy_ir_model(source)
    if isinstance(source, onnx.ModelProto):
        return _from_proto(source, "the given ModelProto")
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            proto = onnx.ModelProto.FromString(bytes(source))
        except DecodeError as e:
            raise QCompileError(f"the given bytes are not an ONNX model (protobuf parse failed: {e})") from e
        return _from_proto(proto, "the given bytes")
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source))
    if type(source).__module__.startswith("onnx_graphsurgeon"):
        import onnx_graphsurgeon as gs

        return _from_proto(gs.export_onnx(source), "the given graphsurgeon graph")
    raise QCompileError(
        f"cannot load a model from {type(source).__name__}; expected a path, bytes, onnx.ModelProto, "
        "onnx_ir.Model or onnx_graphsurgeon.Graph"
    )


def weights_nbytes(model: ir.Model) -> int:
    """Bytes of all initializer data, in memory or in external files."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_model(model: ir.Model, path: str | Path) -> Path:
    """Write `model` to `path` atomically (temporary file + rename).

    Models whose weights exceed ~1.8 GB, or that were loaded from a file with
    external data, are written with external data in `<name>.data` beside the
    model; others as one file without intermediate value_info (see `model_to_bytes`).
    """
    path = Path(path)
    if not model.meta.get(EXTERNAL_DATA_KEY) and weights_nbytes(model) <= EXTERNAL_DATA_THRESHOLD:
        return atomic_write(path, model_to_bytes(model))
    data_name = path.name + ".data"
    with StagedFolder(path.parent) as stage:
        ir.save(model, stage.file(path.name), external_data=data_name)
        stage.commit(order=[data_name, path.name])  # the data lands before the model that points at it
    return path


def proto_without_value_info(model: ir.Model) -> onnx.ModelProto:
    """The model as protobuf without intermediate value_info: runtimes infer it,
    and on a quantized model it is ~10% of the file."""
    proto = ir.to_proto(model)
    proto.graph.ClearField("value_info")
    return proto


def check_serialised(model: bytes | str | os.PathLike) -> None:
    """onnx.checker on serialised bytes or a path (by path, external data is checked in place, not inlined)."""
    onnx.checker.check_model(model if isinstance(model, bytes) else os.fspath(model))


def model_to_bytes(model: ir.Model) -> bytes:
    return proto_without_value_info(model).SerializeToString()


def to_graphsurgeon(model: ir.Model):
    """The model as an `onnx_graphsurgeon.Graph`, for pipelines built on it."""
    import onnx_graphsurgeon as gs

    return gs.import_onnx(ir.to_proto(model))
