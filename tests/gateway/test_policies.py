"""Per-method policies read from manifests (gateway/upstream/policies.py) and the permission rule."""

from __future__ import annotations

from typing import Any

import pytest

from common.auth.permissions import permits
from gateway.upstream.policies import MethodPolicies

ORDERS: dict[str, Any] = {
    "id": "orders-plugin",
    "provides": [
        {
            "name": "IOrders",
            "grpcServices": ["shop.v1.Orders", "shop.v1.OrdersAdmin"],
            "methods": ["Get", "Create", "Delete"],
            "policies": {
                "*": {"requiredPermission": "orders:read", "timeout": 5},
                "Create": {"requiredPermission": "orders:write"},
                "Get": {"idempotent": True},
            },
        }
    ],
}


def test_method_policy_overrides_the_interface_default_key_by_key() -> None:
    policies = MethodPolicies()
    policies.update([ORDERS])
    create = policies.get("shop.v1.Orders", "Create")
    assert create is not None
    assert create.required_permission == "orders:write"
    assert create.timeout == 5
    get = policies.get("shop.v1.OrdersAdmin", "Get")
    assert get is not None
    assert get.idempotent
    assert get.required_permission == "orders:read"
    delete = policies.get("shop.v1.Orders", "Delete")  # not listed: the "*" policy
    assert delete is not None
    assert delete.required_permission == "orders:read"
    assert not delete.idempotent
    assert policies.get("other.v1.Svc", "Get") is None


def test_update_replaces_the_table_and_skips_unreadable_policies() -> None:
    policies = MethodPolicies()
    policies.update([ORDERS])
    broken = {
        "id": "x",
        "provides": [{"grpcServices": ["x.v1.X"], "policies": {"A": {"timeout": -1}, "B": {"idempotent": True}}}],
    }
    policies.update([broken])
    assert policies.get("shop.v1.Orders", "Create") is None
    assert policies.get("x.v1.X", "A") is None
    b = policies.get("x.v1.X", "B")
    assert b is not None
    assert b.idempotent


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        (["orders:read"], "orders:read", True),
        (["orders:read"], "orders:write", False),
        (["*"], "anything:at-all", True),
        (["orders:*"], "orders:items:write", True),
        (["orders:*"], "ordersx:read", False),
        # An empty action is none of the area's: "orders:" (a policy with its action left out) fails closed.
        (["orders:*"], "orders:", False),
        (["orders:"], "orders:", True),
        (["orders"], "orders:read", False),
        ([], "orders:read", False),
    ],
)
def test_permits(granted: list[str], required: str, expected: bool) -> None:
    assert permits(granted, required) is expected
