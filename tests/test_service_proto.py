"""The committed gRPC stubs match the .proto, and the API follows buf's STANDARD style."""

import re
import subprocess
import sys
from pathlib import Path

from intermod.v1 import intermod_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
GENERATED = ["intermod_pb2.py", "intermod_pb2.pyi", "intermod_pb2_grpc.py"]


def test_generated_code_is_current(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", str(PROTO_DIR / "intermod/v1/intermod.proto")],
                   check=True)
    for name in GENERATED:
        fresh = (tmp_path / "intermod/v1" / name).read_text()
        committed = (PROTO_DIR / "intermod/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"


def test_buf_standard_style():
    assert pb.DESCRIPTOR.package == "intermod.v1"
    snake = re.compile(r"^[a-z][a-z0-9_]*$")
    for service in pb.DESCRIPTOR.services_by_name.values():
        assert service.name.endswith("Service")
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        assert enum.values_by_number[0].name == prefix + "UNSPECIFIED"
        assert all(v.name.startswith(prefix) for v in enum.values)
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        assert all(snake.match(f.name) for f in message.fields), message.name
