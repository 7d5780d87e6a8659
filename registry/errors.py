"""Domain errors, each with the gRPC status the interceptor (registry/server.py) turns it into.

RegistryError (INTERNAL)
├── InvalidRequest        INVALID_ARGUMENT   a bad manifest, endpoint, range or phase
├── UnknownLease          NOT_FOUND          expired or never granted: register again
├── UnknownPlugin         NOT_FOUND          no instance of that plugin id / service is registered
├── InstanceTaken         ALREADY_EXISTS     the instance id belongs to another plugin
└── StoreUnavailable      UNAVAILABLE        Redis does not answer
"""

from __future__ import annotations

from registry.model import RegistryError

__all__ = ["InstanceTaken", "InvalidRequest", "RegistryError", "StoreUnavailable", "UnknownLease", "UnknownPlugin"]


class InvalidRequest(RegistryError):
    code = "INVALID_ARGUMENT"


class UnknownLease(RegistryError):
    code = "NOT_FOUND"


class UnknownPlugin(RegistryError):
    code = "NOT_FOUND"


class InstanceTaken(RegistryError):
    code = "ALREADY_EXISTS"


class StoreUnavailable(RegistryError):
    code = "UNAVAILABLE"
