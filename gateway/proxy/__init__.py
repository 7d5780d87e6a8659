"""The one call path: codecs in front of one shared chain (Envoy's shape).

Codecs take gRPC calls in: gRPC-Web (gateway/grpcweb/endpoint.py), Connect
(gateway/connect/endpoint.py), REST transcoded from google.api.http (gateway/transcode/endpoint.py),
native gRPC (gateway/ingress/), grpc-websockets (gateway/websocket/grpcws.py) and upf-mux.v1
(gateway/websocket/mux.py). Each keeps only its framing: reading the request, writing the
answer in its own protocol. Between the two, every call passes the same chain:

    ProxyConfig      config.py      the collaborators, built once by gateway/app.py
    admit()          admission.py   authenticate -> identity -> rate limit -> method policy ->
                                    deadline cap -> route (internal services refused here)
    run_attempts()   attempts.py    replica pick, breaker reporting, transparent and policy retries

gRPC-Web goes through admit() too, not through the auth and rate-limit middlewares, which serve
the gateway's own REST endpoints only (they pass every gRPC call path by: `is_call_path`; transcoded
REST calls never reach them, gateway/middleware/transcode.py). Why:
- one order for every call, written once; when the middlewares admitted gRPC-Web, its order
  (limit before route) and the others' (route before limit, or route before auth on native
  gRPC) had drifted apart;
- the codec renders its own refusals, with the same texts and metadata as the other codecs,
  and shows the RateLimit fields of an allowed call itself;
- a new codec (JSON / Connect) or a new step (tracing) is one edit, not five.
What a gRPC-Web client sees does not change: the same statuses, messages and headers.
"""

from __future__ import annotations

import re

from gateway.proxy.admission import Admitted, admit, admit_local
from gateway.proxy.attempts import Attempt, Refused, run_attempts
from gateway.proxy.config import ProxyConfig

__all__ = ["Admitted", "Attempt", "ProxyConfig", "Refused", "admit", "admit_local", "is_call_path", "run_attempts"]

# /<package.Service>/<Method>, or under /api/: the paths the router gives the gRPC codecs.
_CALL_PATH = re.compile(r"^(?:/api)?/[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+/[A-Za-z_][A-Za-z0-9_]*$")


def is_call_path(path: str) -> bool:
    """Whether `path` is a gRPC call's (the router's gRPC-Web and grpc-websockets routes)."""
    return _CALL_PATH.match(path) is not None
