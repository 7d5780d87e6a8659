"""`GET /api/openapi.json` on `upf run`: the Connect routes of the services routed now, from their
plugins' reflection, valid OpenAPI 3.1; and schemathesis, driven by that document against the demo
plugin, finds no server error and no answer that breaks the document (status, content type, schema)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from openapi_spec_validator import validate

from tests.support.processes import free_port, run_gateway, wait_until

ST = str(Path(sys.executable).parent / "st")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_openapi_of_upf_run_holds_up_under_schemathesis(tmp_path: Path) -> None:
    with run_gateway({"registryUrl": f"127.0.0.1:{free_port()}"}, tmp_path, command="run") as gateway:
        login = httpx.post(
            f"{gateway.url}/api/auth/login", json={"username": "demo", "password": "demo-password"}, timeout=10
        )
        token = login.json()["accessToken"]
        auth = {"authorization": f"Bearer {token}"}  # not a public path unless publicPaths says so

        def described() -> dict[str, object] | None:
            document = httpx.get(f"{gateway.url}/api/openapi.json", headers=auth, timeout=10).json()
            paths = document["paths"]
            return (
                document
                if "/api/upf.demo.v1.Echo/Say" in paths and "/api/upf.orders.v1.Orders/GetOrder" in paths
                else None
            )

        document = wait_until(described, timeout=30, what="the demo and orders plugins to be routed and described")
        validate(document)
        paths = document["paths"]
        assert not [path for path in paths if "upf.storage" in path or "upf.cache" in path]  # internal services
        assert "application/connect+json" in paths["/api/upf.demo.v1.Echo/Count"]["post"]["requestBody"]["content"]

        run = subprocess.run(
            [ST, "run", f"{gateway.url}/api/openapi.json", "-H", f"Authorization: Bearer {token}",
             "--include-path-regex", r"upf\.demo\.v1\.Echo/Say$", "--checks", CHECKS,
             "--max-examples", "25", "--generation-deterministic", "--no-color"],
            capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
