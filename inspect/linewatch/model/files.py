"""The files a model is: its ONNX graph and everything beside it that changes what it does.

Exporters write more than one file. anomalib 2.x and PyTorch's exporter keep the weights outside
the graph (`model.onnx` + `model.onnx.data`); a model from elsewhere is described by a sidecar
`<model>.yaml` (defect classes, confidence, bands), an older anomalib export by `metadata.json`.
Each of them changes the verdicts, so a model version is all of them: they are found here, stored,
moved and hashed together. A graph alone keeps the plain SHA-256 of its file as its version hash
(so hashes already recorded stay valid); with companions the version hash is the SHA-256 of the
list of `name<TAB>sha256` lines of every file, the graph included.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

SIDECAR_SUFFIX = ".yaml"
LEGACY_ANOMALIB_METADATA = "metadata.json"


class ModelFilesError(Exception):
    """A file the model needs is missing, or the graph names one outside its own folder."""


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class ModelFiles:
    """A model's graph (the real file, links resolved) and its companions, named relative to its folder."""

    graph: Path
    external_data: tuple[str, ...] = ()  # weights the graph keeps in other files: it must be loaded from its path
    sidecars: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return self.graph.parent

    @property
    def companions(self) -> tuple[str, ...]:
        return tuple(sorted({*self.external_data, *self.sidecars}))

    def read_by(self, sidecars: tuple[str, ...]) -> ModelFiles:
        """The same files with only the sidecars its adapter reads (a native model ignores a stray YAML)."""
        return ModelFiles(self.graph, self.external_data, tuple(n for n in self.sidecars if n in sidecars))

    def names(self) -> tuple[str, ...]:
        """Every file of the model, relative to its folder: the graph first."""
        return (self.graph.name, *self.companions)

    def version_hash(self, graph_sha256: str | None = None) -> str:
        """The version's identity; `graph_sha256` when the caller already hashed the graph's bytes."""
        graph_sha = graph_sha256 or file_sha256(self.graph)
        if not self.companions:
            return graph_sha
        lines = [f"{self.graph.name}\t{graph_sha}\n"]
        lines += [f"{name}\t{file_sha256(self.folder / name)}\n" for name in self.companions]
        return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def external_data_locations(graph: bytes) -> tuple[str, ...]:
    """The files an ONNX graph keeps tensors in (its initializers' `location` entries), read with protobuf alone
    (`_onnx_message`). A graph whose bytes lack the word `location` has none (protobuf stores the key as plain
    text): the usual one-file model is answered without parsing it."""
    if b"location" not in graph:
        return ()
    try:
        model = _parsed(graph, "ModelTensors")
    except ValueError:  # not a protobuf message: ONNX Runtime will say what is wrong with it
        return ()
    found: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == _EXTERNAL:
            found.update(e.value for e in tensor.external_data if e.key == "location")
    return tuple(sorted(found))


def metadata_props(graph: bytes) -> dict[str, str]:
    """An ONNX graph's `metadata_props` (key -> value), read with protobuf alone (`_onnx_message`). Raises
    ValueError when the bytes are not a protobuf message."""
    return {entry.key: entry.value for entry in _parsed(graph, "ModelMetadata").metadata_props}


_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _parsed(graph: bytes, kind: str) -> Any:
    from google.protobuf.message import DecodeError

    message = _onnx_message(kind)()
    try:
        message.ParseFromString(graph)
    except DecodeError as exc:
        raise ValueError(f"not an ONNX model: {exc}") from exc
    return message


@cache
def _onnx_message(kind: str) -> type:
    """ONNX's ModelProto with the few fields linewatch reads, every other field skipped as unknown: `ModelMetadata`
    (field 14, metadata_props) or `ModelTensors` (graph 7 -> initializer 5 -> external_data 13, data_location 14).

    Why not `onnx.load`: the onnx import holds its process for 0.7 s and parses every tensor. record reads a
    model's training-image figures when it learns a drift reference, beside the running line: through onnx that
    took a helper process about 1.7 s of a core, and the inference workers waited for that core; a worker paid
    the import at every start of a model with external weights. With this schema a 13 MB graph's metadata is
    read in ~20 ms."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="linewatch_onnx.proto", package="linewatch_onnx", syntax="proto2")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = proto.message_type.add(name=name)
        for field_name, number, kind_, label, type_name in fields:
            m.field.add(name=field_name, number=number, type=kind_, label=label, **(
                {"type_name": f".linewatch_onnx.{type_name}"} if type_name else {}))

    one, many, text, sub, int32 = field.LABEL_OPTIONAL, field.LABEL_REPEATED, field.TYPE_STRING, field.TYPE_MESSAGE, \
        field.TYPE_INT32
    message("StringStringEntryProto", ("key", 1, text, one, ""), ("value", 2, text, one, ""))
    message("ModelMetadata", ("metadata_props", 14, sub, many, "StringStringEntryProto"))
    message("TensorProto", ("external_data", 13, sub, many, "StringStringEntryProto"),
            ("data_location", 14, int32, one, ""))
    message("GraphProto", ("initializer", 5, sub, many, "TensorProto"))
    message("ModelTensors", ("graph", 7, sub, one, "GraphProto"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    found: type = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"linewatch_onnx.{kind}"))
    return found


def model_files(path: Path, graph: bytes | None = None) -> ModelFiles:
    """The files of the model at `path` (a link is followed: companions lie beside the real file); every
    sidecar that exists is listed, `read_by` keeps those its adapter uses."""
    real = path.resolve()
    data = graph if graph is not None else real.read_bytes()
    external = external_data_locations(data)
    for name in external:
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelFilesError(f"model {path}: its weights file {name!r} lies outside the model's folder; "
                                  "refusing to read it")
        if not (real.parent / rel).is_file():
            raise ModelFilesError(f"model {path}: the graph keeps its weights in {name}, which is not beside it "
                                  f"in {real.parent} (copy both files together)")
    sidecars = [p.name for p in (real.with_suffix(SIDECAR_SUFFIX), real.parent / LEGACY_ANOMALIB_METADATA)
                if p.is_file()]
    return ModelFiles(real, external, tuple(sidecars))
