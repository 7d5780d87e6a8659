from __future__ import annotations

from typing import Any

import httpx

from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway


def test_unary_call_through_gateway(gateway: Gateway, pb: Any) -> None:
    body = frame(pb.CallRequest(payload=b"hello").SerializeToString())
    r = httpx.post(f"{gateway.url}/accept.v1.Probe/Unary", content=body, headers={"content-type": BINARY})
    response = parse_response(r.status_code, dict(r.headers), r.content)
    assert response.status == 0
    assert pb.CallReply.FromString(response.messages[0]).payload == b"hello"
