"""The Connect protocol (connectrpc.com/docs/protocol) on the gateway's gRPC paths, from descriptors.

`POST /api/<pkg.Service>/<Method>` with `application/json` or `application/proto` is a Connect unary
call; `GET` with the message in the query is one too, for methods marked side-effect free; a
`application/connect+json|proto` body is a Connect stream (server streaming here). The JSON forms need
the method's schema, which the gateway learns from the plugin (gateway.descriptors); the binary forms
are forwarded as bytes. Errors keep Connect's JSON shape and its HTTP statuses, from the one table in
gateway.errors.

    protocol.py   content types, Connect-Timeout-Ms, the GET query, headers <-> metadata
    codec.py      request bodies to the method's wire bytes and answers back, errors naming the field
    body.py       a request body read whole up to a limit (REST, gateway/transcode/, reads it too)
    envelope.py   the streaming envelope (flags, length) and its end-of-stream message
    errors.py     Connect error bodies from gRPC statuses (details included)
"""

from __future__ import annotations
