"""Domain errors, each with the gRPC status the interceptor (registry/server.py) turns it into.

RegistryError (INTERNAL)
├── InvalidRequest        INVALID_ARGUMENT   a bad manifest, endpoint, range or phase
├── UnknownLease          NOT_FOUND          expired or never granted: register again
├── UnknownPlugin         NOT_FOUND          no instance of that plugin id / service is registered
├── InstanceTaken         ALREADY_EXISTS     the instance id belongs to another plugin
├── ServiceTaken          ALREADY_EXISTS     another plugin id serves that gRPC service
├── Unauthenticated       UNAUTHENTICATED    Register without a registration credential
├── PermissionDenied      PERMISSION_DENIED  the credential is another plugin id's
└── StoreUnavailable      UNAVAILABLE        Redis does not answer
"""

from __future__ import annotations

from registry.model import RegistryError

__all__ = [
    "InstanceTaken",
    "InvalidRequest",
    "PermissionDenied",
    "RegistryError",
    "ServiceTaken",
    "StoreUnavailable",
    "Unauthenticated",
    "UnknownLease",
    "UnknownPlugin",
]


class InvalidRequest(RegistryError):
    code = "INVALID_ARGUMENT"


class UnknownLease(RegistryError):
    code = "NOT_FOUND"


class UnknownPlugin(RegistryError):
    code = "NOT_FOUND"


class InstanceTaken(RegistryError):
    code = "ALREADY_EXISTS"


class ServiceTaken(RegistryError):
    code = "ALREADY_EXISTS"


class Unauthenticated(RegistryError):
    code = "UNAUTHENTICATED"


class PermissionDenied(RegistryError):
    code = "PERMISSION_DENIED"


class StoreUnavailable(RegistryError):
    code = "UNAVAILABLE"
