"""REST transcoding from `google.api.http` annotations, as Envoy's gRPC-JSON transcoder and
grpc-gateway do it, for plugins whose protos carry them; the rules come from the descriptors the
gateway learns at run time (gateway.descriptors), so a plugin's REST routes can appear when it registers.

Not served yet: the router does not mount these routes. Two things are open: where they live (under
/api/, since the shell owns the rest of the path space), and admission (the REST middlewares would
count a transcoded call that admit() counts too).

    template.py    path templates: parse, match, bind variables
    http_rule.py   a method's rule and additional bindings, checked against its messages
    request.py     path variables, query parameters and body into the request message; the answer
                   (or its response_body field) back to JSON
"""

from __future__ import annotations
