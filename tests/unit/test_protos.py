"""The generated protobuf code is current, and our .proto files are wire-compatible with Triton's.

Triton's descriptors come from ``tritonclient`` (2.41, the dev extra): a subprocess dumps its serialized
``FileDescriptorProto``s and this process compares them with ours as plain data.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from surge.protos import grpc_service_pb2, model_config_pb2

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "inference"

# Fields we define that tritonclient 2.41's protos predate: upstream Triton added them later with these
# numbers (triton-inference-server/common protobuf/model_config.proto and grpc_service.proto, main).
# They are absent from 2.41's descriptors, so they cannot be compared there; any other field must match.
NEWER_THAN_TRITONCLIENT_2_41 = {
    (".inference.ModelStatistics", "response_stats", 9),
    (".inference.ModelInput", "is_non_linear_format_io", 9),
    (".inference.ModelOutput", "is_non_linear_format_io", 7),
    (".inference.ModelEnsembling", "max_inflight_requests", 2),
    (".inference.ModelConfig", "runtime", 25),
}


# --- generated code is current ---------------------------------------------------------------------------


def _generate_check(generate_py: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    generator = REPO / ".cache" / "grpcio-tools-1.62.3"  # protos/generate.py's GENERATOR, shared by the copies
    if not (generator / "grpc_tools").is_dir() and not _pypi_reachable():
        pytest.skip("the pinned generator (grpcio-tools 1.62.3) is not installed and pypi.org is not reachable")
    return subprocess.run(
        [sys.executable, str(generate_py), "--check"], cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "SURGE_GENERATOR_DIR": str(generator)},
    )


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_generated_code_matches_the_protos() -> None:
    result = _generate_check(REPO / "protos" / "generate.py", REPO)
    assert result.returncode == 0, result.stderr


def test_generate_check_fails_when_a_proto_changes(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(REPO / "protos", protos, ignore=shutil.ignore_patterns("__pycache__"))
    # the copy's generate.py compares against the copy (PROTOS is its own folder)
    unchanged = _generate_check(protos / "generate.py", tmp_path)
    assert unchanged.returncode == 0, unchanged.stderr

    proto = protos / "grpc_service.proto"
    text = proto.read_text()
    assert "  bool live = 1;\n" in text
    proto.write_text(text.replace("  bool live = 1;\n", "  bool live = 1;\n  bool extra = 2;\n", 1))
    changed = _generate_check(protos / "generate.py", tmp_path)
    assert changed.returncode == 1, changed.stderr
    assert "generated code is stale" in changed.stderr
    assert "grpc_service_pb2.py" in changed.stderr
    # --check only compares: the committed code in the copy is untouched
    assert (protos / "grpc_service_pb2.py").read_bytes() == (REPO / "protos" / "grpc_service_pb2.py").read_bytes()


def test_generate_check_covers_surge_service(tmp_path: Path) -> None:
    """Our own API (surge.v1) is generated and checked like the Triton protos."""
    assert (REPO / "protos" / "surge_service_pb2.py").is_file() and (REPO / "protos" / "surge_service_pb2_grpc.py").is_file()
    protos = tmp_path / "protos"
    shutil.copytree(REPO / "protos", protos, ignore=shutil.ignore_patterns("__pycache__"))
    proto = protos / "surge_service.proto"
    text = proto.read_text()
    assert "message RollbackRequest { string model = 1; }" in text
    proto.write_text(text.replace("message RollbackRequest { string model = 1; }", "message RollbackRequest { string model = 1; uint32 steps = 2; }"))
    changed = _generate_check(protos / "generate.py", tmp_path)
    assert changed.returncode == 1, changed.stderr
    assert "surge_service_pb2.py" in changed.stderr


# --- wire compatibility with Triton ----------------------------------------------------------------------

_DUMP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tritonclient.grpc import model_config_pb2, service_pb2
    out = Path(sys.argv[1])
    (out / "service.pb").write_bytes(service_pb2.DESCRIPTOR.serialized_pb)
    (out / "model_config.pb").write_bytes(model_config_pb2.DESCRIPTOR.serialized_pb)
    """
)


@pytest.fixture(scope="module")
def triton_files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install -e .[dev])")
    out = tmp_path_factory.mktemp("triton_descriptors")
    result = subprocess.run([sys.executable, "-c", _DUMP, str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    files = []
    for name in ("service.pb", "model_config.pb"):
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString((out / name).read_bytes())
        files.append(proto)
    return files


@pytest.fixture(scope="module")
def our_files() -> list[descriptor_pb2.FileDescriptorProto]:
    files = []
    for module in (grpc_service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return files


def _messages(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: Any) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            found[name] = message
            walk(name, message.nested_type)

    for f in files:
        walk(f".{f.package}", f.message_type)
    return found


def _enums(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def walk(prefix: str, messages: Any) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            for enum in message.enum_type:
                found[f"{name}.{enum.name}"] = enum
            walk(name, message.nested_type)

    for f in files:
        for enum in f.enum_type:
            found[f".{f.package}.{enum.name}"] = enum
        walk(f".{f.package}", f.message_type)
    return found


def _field_facts(message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
    return {
        "name": field.name,
        "type": descriptor_pb2.FieldDescriptorProto.Type.Name(field.type),
        "label": descriptor_pb2.FieldDescriptorProto.Label.Name(field.label),
        "type_name": field.type_name,
        "oneof": message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") and not field.proto3_optional else None,
        "proto3_optional": field.proto3_optional,
    }


def test_both_sides_use_package_inference(triton_files: list, our_files: list) -> None:
    assert [f.package for f in triton_files] == [PACKAGE, PACKAGE]
    assert [f.package for f in our_files] == [PACKAGE, PACKAGE]


def test_shared_messages_have_triton_field_numbers_names_and_types(triton_files: list, our_files: list) -> None:
    theirs = _messages(triton_files)
    ours = _messages(our_files)
    shared = sorted(set(ours) & set(theirs))
    assert len(shared) > 80  # the comparison really covers the protocol, not a handful of names
    mismatches = []
    for name in shared:
        their_fields = {f.number: f for f in theirs[name].field}
        for field in ours[name].field:
            mine = _field_facts(ours[name], field)
            their = their_fields.get(field.number)
            if their is None:
                if (name, field.name, field.number) not in NEWER_THAN_TRITONCLIENT_2_41:
                    mismatches.append(f"{name}.{field.name} = {field.number}: Triton has no field {field.number}")
                continue
            expected = _field_facts(theirs[name], their)
            if mine != expected:
                mismatches.append(f"{name} field {field.number}: ours {mine} != Triton {expected}")
        if ours[name].options.map_entry != theirs[name].options.map_entry:
            mismatches.append(f"{name}: map_entry differs")
    assert mismatches == []


def test_message_typed_fields_are_package_qualified(our_files: list) -> None:
    for name, message in _messages(our_files).items():
        for field in message.field:
            if field.type_name:
                assert field.type_name.startswith(".inference."), f"{name}.{field.name}: {field.type_name}"


def test_service_messages_carry_every_triton_field(triton_files: list, our_files: list) -> None:
    # Request/response messages of the service (grpc_service.proto) must not drop anything a Triton client sends
    # or expects; model_config.proto may leave out Triton features Surge does not have.
    theirs = _messages(triton_files[:1])
    ours = _messages(our_files[:1])
    missing = []
    for name in sorted(set(ours) & set(theirs)):
        numbers = {f.number for f in ours[name].field}
        missing += [f"{name}.{f.name} = {f.number}" for f in theirs[name].field if f.number not in numbers]
    assert missing == []


def test_every_service_message_of_triton_is_defined(triton_files: list, our_files: list) -> None:
    assert sorted(set(_messages(triton_files[:1])) - set(_messages(our_files[:1]))) == []


def test_shared_enums_have_the_same_values(triton_files: list, our_files: list) -> None:
    theirs = _enums(triton_files)
    ours = _enums(our_files)
    assert ours, "no enums found in our protos"
    unknown = sorted(set(ours) - set(theirs))
    assert unknown == []
    for name, enum in ours.items():
        assert {v.name: v.number for v in enum.value} == {v.name: v.number for v in theirs[name].value}, name


def test_service_methods_match_triton(triton_files: list, our_files: list) -> None:
    (their_service,) = triton_files[0].service
    (our_service,) = our_files[0].service
    assert our_service.name == their_service.name == "GRPCInferenceService"
    ours = {m.name: m for m in our_service.method}
    problems = []
    for method in their_service.method:
        mine = ours.get(method.name)
        if mine is None:
            problems.append(f"{method.name}: missing")
            continue
        expected = (method.input_type, method.output_type, method.client_streaming, method.server_streaming)
        got = (mine.input_type, mine.output_type, mine.client_streaming, mine.server_streaming)
        if got != expected:
            problems.append(f"{method.name}: ours {got} != Triton {expected}")
    assert problems == []
    assert ours["ModelStreamInfer"].client_streaming and ours["ModelStreamInfer"].server_streaming


def test_allow_list_names_fields_we_define(our_files: list) -> None:
    ours = _messages(our_files)
    for message, field_name, number in NEWER_THAN_TRITONCLIENT_2_41:
        fields = {f.name: f.number for f in ours[message].field}
        assert fields.get(field_name) == number, (message, field_name)
