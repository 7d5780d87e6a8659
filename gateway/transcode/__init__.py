"""REST transcoding from `google.api.http` annotations, as Envoy's gRPC-JSON transcoder and
grpc-gateway do it, for plugins whose protos carry them; the rules come from the descriptors the
gateway learns at run time (gateway.descriptors), so a plugin's REST routes can appear when it registers.

Served under /api/ (`get: "/v1/orders/{id}"` is `GET /api/v1/orders/{id}`; the shell owns the rest
of the path space) by gateway/middleware/transcode.py, before the REST auth and rate-limit
middlewares: a transcoded call is admitted once, by the one call path, as the method it stands for.

    template.py    path templates: parse, match, bind variables
    http_rule.py   a method's rule and additional bindings, checked against its messages
    request.py     path variables, query parameters and body into the request message; the answer
                   (or its response_body field) back to JSON
    routes.py      the routes served now, from the routed services' descriptors, most specific first
    endpoint.py    one REST call: admitted, run on a replica, answered as JSON
"""

from __future__ import annotations
