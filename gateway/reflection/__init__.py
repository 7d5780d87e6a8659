"""grpc.reflection (v1 and v1alpha) on the gateway's native gRPC port, for every routed plugin at once.

A client (grpcurl, `buf curl`, grpcio-reflection) lists and describes the port's services as it would
a single server's: `list_services` names the services a client may call now (the exposed routes;
internal services are neither listed nor described) and the reflection services themselves; the
other requests are answered from the descriptors the gateway learns from each plugin's own
reflection (gateway/descriptors/), so what is described follows the plugins as they come, go and
change version. The gateway serves the calls itself (gateway/ingress/local.py), admitted as calls to
a plugin are: with auth on, reflection needs a token unless auth.publicPaths lists its paths.

    service.py   ServerReflection: the answers, one stream at a time
"""

from __future__ import annotations

from gateway.reflection.service import REFLECTION_PATHS, ServerReflection

__all__ = ["REFLECTION_PATHS", "ServerReflection"]
