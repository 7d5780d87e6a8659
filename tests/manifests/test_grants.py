"""The manifest's `grants`: what other plugins may do with this plugin's data, checked as it is read."""

from __future__ import annotations

import pytest

from manifests import ManifestError, parse_manifest

HEAD = "id: orders-plugin\nversion: 1.0.0\nname: Orders\ntype: business\n"


def test_grants_read_as_written() -> None:
    manifest = parse_manifest(
        HEAD
        + """\
grants:
  storage: [{collection: orders, plugins: [billing-plugin, audit-plugin], access: read}]
  cache: [{keyPrefix: "orders:", plugins: [billing-plugin], access: read-write}]
  files: [{pathPrefix: exports/, plugins: [reports-plugin], access: read}]
"""
    )
    assert manifest.grants is not None
    assert manifest.grants.storage[0].plugins == ["billing-plugin", "audit-plugin"]
    assert manifest.grants.cache[0].key_prefix == "orders:"
    assert manifest.grants.files[0].access == "read"
    assert parse_manifest(HEAD).grants is None  # no grants: nobody else reaches the data


@pytest.mark.parametrize(
    ("grants", "problem"),
    [
        ("storage: [{collection: orders, plugins: [billing-plugin]}]", "grants.storage[0].access: required key"),
        (
            "storage: [{collection: orders, plugins: [billing-plugin], access: write}]",
            'grants.storage[0].access: expected "read" or "read-write"',
        ),
        ("storage: [{collection: orders, plugins: [], access: read}]", "grants.storage[0].plugins"),
        ("storage: [{collection: 9lives, plugins: [b-plugin], access: read}]", "is not a collection name"),
        ('cache: [{keyPrefix: "orders:*", plugins: [b-plugin], access: read}]', "is not a key prefix"),
        ("files: [{pathPrefix: /exports, plugins: [b-plugin], access: read}]", "is not a path prefix"),
        ("storage: [{collection: orders, plugins: [Billing], access: read}]", "is not a plugin id"),
        (
            "cache: [{keyPrefix: x, plugins: [orders-plugin], access: read}]",
            'grants.cache[0].plugins[0]: "orders-plugin" is this plugin',
        ),
        (
            "files: [{pathPrefix: x/, plugins: [b-plugin, b-plugin], access: read}]",
            'grants.files[0].plugins[1]: plugin "b-plugin" is listed twice',
        ),
        ("queues: []", "grants.queues"),
    ],
)
def test_a_wrong_grant_is_named(grants: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD + "grants:\n  " + grants + "\n")
    assert problem in str(caught.value)
