"""A container health check with nothing but the image's Python (no curl, no grpc_health_probe).

    python /app/docker/healthcheck.py http [URL]       GET URL (default: the gateway's /readyz on
                                                       127.0.0.1:$UPF_HTTP_PORT, 8080): healthy on 200
    python /app/docker/healthcheck.py grpc HOST:PORT   grpc.health.v1 Check: healthy when SERVING

Exit status 0 healthy, 1 not (what Docker's HEALTHCHECK and compose's healthcheck read).
"""

from __future__ import annotations

import os
import sys
import urllib.request


def http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else "http"
    if kind == "http":
        port = os.environ.get("UPF_HTTP_PORT", "8080")
        return 0 if http(argv[1] if len(argv) > 1 else f"http://127.0.0.1:{port}/readyz") else 1
    if kind == "grpc" and len(argv) == 2:
        return 0 if grpc_serving(argv[1]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
