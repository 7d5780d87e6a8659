"""Connect against `upf run`, with tools written elsewhere: `buf curl` (npm @bufbuild/buf-linux-x64) calls the demo
plugin with the Connect protocol, unary and server streaming, and with gRPC-Web; `GET /api/openapi.json`
describes the Connect and REST routes of the services routed now, and schemathesis, driven by that
document against the demo plugin (Connect) and the orders plugin (REST), finds no server error and no
answer that breaks the document."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate
from upf.demo.v1 import demo_pb2

from tests.support.processes import ROOT, Gateway, free_port, run_gateway, wait_until

ST = str(Path(sys.executable).parent / "st")
# buf's binary for this platform: the @bufbuild/buf wrapper lists every platform's package as optional,
# and the package mirror here holds only linux-x64's, so `npm ci` would refuse its lock.
BUF = str(ROOT / "tests" / "js" / "node_modules" / "@bufbuild" / "buf-linux-x64" / "bin" / "buf")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    work = tmp_path_factory.mktemp("connect-upf-run")
    with run_gateway({"registryUrl": f"127.0.0.1:{free_port()}"}, work, command="run") as gateway:
        login = httpx.post(
            f"{gateway.url}/api/auth/login", json={"username": "demo", "password": "demo-password"}, timeout=10
        )
        token = login.json()["accessToken"]
        auth = {"authorization": f"Bearer {token}"}

        def routed() -> bool:
            say = httpx.post(f"{gateway.url}/api/upf.demo.v1.Echo/Say", json={"text": "x"}, headers=auth, timeout=10)
            return say.status_code == 200

        wait_until(routed, timeout=30, what="the demo plugin to be routed")
        yield gateway, token


@pytest.fixture(scope="module")
def demo_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo.proto as a descriptor set, which buf reads as an image. Not the proto/ folder: orders.proto
    there imports google/api/annotations.proto, which buf would have to fetch from the BSR."""
    files = descriptor_pb2.FileDescriptorSet()
    demo_pb2.DESCRIPTOR.CopyToProto(files.file.add())
    path = tmp_path_factory.mktemp("buf-schema") / "demo.binpb"
    path.write_bytes(files.SerializeToString())
    return path


def _buf(platform: tuple[Gateway, str], schema: Path, protocol: str, method: str, data: dict[str, Any]) -> list[Any]:
    gateway, token = platform
    run = subprocess.run(
        [BUF, "curl", "--schema", str(schema), "--protocol", protocol, "-H", f"authorization: Bearer {token}",
         "--data", json.dumps(data), f"{gateway.url}/api/upf.demo.v1.Echo/{method}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # buf curl prints each message as indented JSON, one after another.
    decoder, text, messages = json.JSONDecoder(), run.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    return messages


@pytest.mark.parametrize("protocol", ["connect", "grpcweb"])
def test_buf_curl_calls_the_demo_plugin(platform: tuple[Gateway, str], demo_schema: Path, protocol: str) -> None:
    assert _buf(platform, demo_schema, protocol, "Say", {"text": "hi"}) == [{"text": "echo: hi"}]
    assert _buf(platform, demo_schema, protocol, "Count", {"count": 3}) == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_openapi_of_upf_run_holds_up_under_schemathesis(platform: tuple[Gateway, str], tmp_path: Path) -> None:
    gateway, token = platform
    auth = {"authorization": f"Bearer {token}"}  # not a public path unless publicPaths says so

    def described() -> dict[str, Any] | None:
        document: dict[str, Any] = httpx.get(f"{gateway.url}/api/openapi.json", headers=auth, timeout=10).json()
        return document if "/api/upf.orders.v1.Orders/GetOrder" in document.get("paths", {}) else None

    document = wait_until(described, timeout=30, what="the orders plugin to be routed and described")
    validate(document)
    paths = document["paths"]
    assert "/api/upf.demo.v1.Echo/Say" in paths
    assert not [path for path in paths if "upf.storage" in path or "upf.cache" in path]  # internal services
    assert "application/connect+json" in paths["/api/upf.demo.v1.Echo/Count"]["post"]["requestBody"]["content"]
    # The orders plugin's REST routes, from its google.api.http annotations.
    assert set(paths["/api/v1/orders"]) == {"get", "post"}
    assert set(paths["/api/v1/orders/{id}"]) == {"get", "patch"}
    assert "/api/v1/orders/{id}/status/{status}" in paths

    # Connect (Echo/Say) and REST (every orders route): no server error, no answer the document denies.
    run = subprocess.run(
        [ST, "run", f"{gateway.url}/api/openapi.json", "-H", f"Authorization: Bearer {token}",
         "--include-path-regex", r"upf\.demo\.v1\.Echo/Say$|^/api/v1/orders", "--checks", CHECKS,
         "--max-examples", "25", "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
