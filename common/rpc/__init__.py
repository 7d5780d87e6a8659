"""gRPC for plugins on the HTTP/2 core the gateway uses (common/http2/).

server.py    Server: a drop-in for the grpc.aio.Server that generated code and the plugin SDK use
call.py      ServedCall: one client stream, its request messages, its response, its flow control
dispatch.py  run_call: a method handler of each of the four shapes, and the status it ends with
context.py   Context: the grpc.aio.ServicerContext a servicer gets
wire.py      gRPC's HTTP/2 mapping: header blocks, timeouts, metadata, message prefixes
"""

from __future__ import annotations

from common.rpc.server import Server

__all__ = ["Server"]
