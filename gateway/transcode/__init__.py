"""REST transcoding from `google.api.http` annotations, as Envoy's gRPC-JSON transcoder and
grpc-gateway do it, for plugins whose protos carry them; the rules come from the descriptors the
gateway learns at run time (gateway.descriptors), so a plugin's REST routes appear when it registers.

    template.py    path templates: parse, match, bind variables
    http_rule.py   a method's rule and additional bindings, checked against its messages
    request.py     path variables, query parameters and body into the request message; the answer
                   (or its response_body field) back to JSON
"""

from __future__ import annotations
