"""The real servers behind files-s3 and files-gcs, started by the tests on free ports and stopped by PID.

moto's standalone S3 server (`moto_server`) and gcp-storage-emulator are real HTTP API servers: the
plugins talk to them with the same clients and requests they use against AWS and Google. Neither
checks a signed URL's signature or expiry, which is why the suite expects those refusals only from
files-local (see test_files.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.processes import Process, _died, free_port, wait_until

BIN = Path(sys.executable).parent
BUCKET = "upf-files-conformance"


class HttpServer:
    """A backend server process that can be stopped and started again on the same port."""

    def __init__(self, args: list[str], port: int, log_dir: Path, name: str) -> None:
        self._args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log_dir = log_dir
        self._name = name
        self.process: Process | None = None
        self._starts = 0

    def start(self) -> None:
        self.launch()
        self.wait()

    def launch(self) -> None:
        """Start the process without waiting (servers that import for seconds start side by side)."""
        self._starts += 1
        log = self._log_dir / f"{self._name}-{self.port}-{self._starts}.log"
        self.process = Process(self._args, log=log)

    def wait(self) -> None:
        process = self.process
        assert process is not None
        wait_until(
            lambda: self.answers() or (not process.alive() and _died(process)),
            timeout=30,
            what=f"{self._name} to answer on {self.url}",
        )
        self.after_start()

    def after_start(self) -> None:
        """What a fresh server needs before the plugin can use it (a bucket)."""

    def answers(self) -> bool:
        try:
            httpx.get(self.url + "/", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


class MotoS3(HttpServer):
    def __init__(self, log_dir: Path) -> None:
        port = free_port()
        super().__init__([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, log_dir, "moto-s3")

    def after_start(self) -> None:
        # moto does not check request signatures, so an unsigned CreateBucket is enough here.
        httpx.put(f"{self.url}/{BUCKET}", timeout=5).raise_for_status()


class GcsEmulator(HttpServer):
    def __init__(self, log_dir: Path) -> None:
        port = free_port()
        args = [
            str(BIN / "gcp-storage-emulator"),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            BUCKET,
            "--quiet",
        ]
        super().__init__(args, port, log_dir, "gcs-emulator")


def service_account_file(directory: Path) -> Path:
    """A service account key file with a fresh RSA key: what GCS V4 signing needs (the emulator takes
    any signature, so no Google account is involved)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = directory / "gcs-service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "upf",
                "private_key_id": "test",
                "private_key": pem,
                "client_email": "files@upf.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "http://127.0.0.1:9/token",
            }
        )
    )
    return path
