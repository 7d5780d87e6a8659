"""Protobuf descriptors of the routed plugins, learned at run time from their server reflection.

The gateway proxies gRPC-Web, native gRPC and WebSocket calls as bytes and needs no schema for them.
JSON (Connect), REST transcoding and OpenAPI do: a JSON body must become the method's request message.
So the gateway asks a replica of the service for its descriptors through grpc.reflection (v1, then
v1alpha for servers that only have the older name), once per plugin version, and keeps them:

    fetch.py      the reflection conversation: the file that defines a symbol and every file it imports
    catalog.py    descriptors per service, fetched once per plugin version (a re-registration with a
                  new version fetches again), shared by concurrent callers, with errors a client can read
"""

from __future__ import annotations

from gateway.descriptors.catalog import DescriptorCatalog, DescriptorsUnavailable, MethodSchema

__all__ = ["DescriptorCatalog", "DescriptorsUnavailable", "MethodSchema"]
