"""Whom a request counts against (gateway/ratelimit/keys.py), on hand-made ASGI scopes.

- ip: the connecting peer, unless it is a trusted proxy; X-Forwarded-For is walked from the right
  only through trusted proxies (CIDRs) and for at most `trustedHops`; IPv6 per /64 (`ipv6Subnet`).
- token: the verified subject that auth leaves in `scope["upf.identity"]`, else the ip.
- apiKey: the configured header, hashed, else the ip.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.auth.identity import IDENTITY_SCOPE_KEY, Identity
from gateway.ratelimit import TrustedProxies, identify_by, identify_from_settings
from gateway.settings import RateLimitSettings


def scope(peer: str | None = "198.51.100.9", *headers: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 41234),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        **extra,
    }


def xff(value: str) -> tuple[str, str]:
    return ("x-forwarded-for", value)


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() -> None:
    proxies = TrustedProxies()
    assert proxies.client(scope("198.51.100.9", xff("203.0.113.7"))) == "ip:198.51.100.9"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client(scope("198.51.100.9", xff("203.0.113.7"))) == "ip:198.51.100.9"


def test_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client(scope("10.1.2.3", xff("203.0.113.7"))) == "ip:203.0.113.7"


def test_the_walk_passes_trusted_proxies_and_stops_at_the_first_untrusted_hop() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "192.0.2.1"])
    # The client made up the first two entries; the edge proxy (192.0.2.1) saw 203.0.113.7.
    chain = "1.2.3.4, 5.6.7.8, 203.0.113.7, 192.0.2.1"
    assert proxies.client(scope("10.1.2.3", xff(chain))) == "ip:203.0.113.7"


def test_several_forwarded_for_lines_are_one_list() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    request = scope("10.0.0.2", xff("203.0.113.7"), xff("10.0.0.1"))
    assert proxies.client(request) == "ip:203.0.113.7"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client(scope("10.0.0.2", xff("10.0.0.9, 10.0.0.1"))) == "ip:10.0.0.9"


def test_trusted_hops_alone_believes_that_many_entries_from_the_right() -> None:
    chain = "1.2.3.4, 203.0.113.7, 192.0.2.1"
    assert TrustedProxies(hops=1).client(scope("10.0.0.2", xff(chain))) == "ip:192.0.2.1"
    assert TrustedProxies(hops=2).client(scope("10.0.0.2", xff(chain))) == "ip:203.0.113.7"
    assert TrustedProxies(hops=0).client(scope("10.0.0.2", xff(chain))) == "ip:10.0.0.2"


def test_trusted_hops_caps_a_walk_through_trusted_networks() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"], hops=1)
    assert proxies.client(scope("10.0.0.2", xff("203.0.113.7, 10.0.0.1"))) == "ip:10.0.0.1"


def test_ports_in_forwarded_for_are_ignored() -> None:
    proxies = TrustedProxies(hops=1)
    assert proxies.client(scope("10.0.0.2", xff("203.0.113.7:5555"))) == "ip:203.0.113.7"
    assert proxies.client(scope("10.0.0.2", xff("[2001:db8::1]:5555"))) == "ip:2001:db8::/64"


def test_garbage_in_forwarded_for_counts_against_the_proxy_that_wrote_it() -> None:
    # "unknown" (or worse) says nothing about the client; the proxy that said it is all we know.
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client(scope("10.0.0.2", xff("unknown"))) == "ip:10.0.0.2"
    assert proxies.client(scope("10.0.0.2", xff("203.0.113.7, <script>, 10.0.0.1"))) == "ip:10.0.0.1"


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    proxies = TrustedProxies()
    one = proxies.client(scope("2001:db8:1:2::1"))
    same = proxies.client(scope("2001:db8:1:2:ffff:ffff:ffff:ffff"))
    other = proxies.client(scope("2001:db8:1:3::1"))
    assert one == same == "ip:2001:db8:1:2::/64"
    assert other == "ip:2001:db8:1:3::/64"


def test_ipv6_grouping_prefix_is_configurable() -> None:
    proxies = TrustedProxies(ipv6_subnet=48)
    assert proxies.client(scope("2001:db8:1:ff::1")) == "ip:2001:db8:1::/48"


def test_ipv4_mapped_ipv6_peers_are_ipv4_clients() -> None:
    assert TrustedProxies().client(scope("::ffff:203.0.113.7")) == "ip:203.0.113.7"


def test_trusted_proxy_given_as_ipv4_mapped_address_is_recognised() -> None:
    proxies = TrustedProxies(["127.0.0.1"])
    assert proxies.client(scope("::ffff:127.0.0.1", xff("203.0.113.7"))) == "ip:203.0.113.7"


def test_a_scope_without_client_shares_one_bucket() -> None:
    assert TrustedProxies().client(scope(None)) == "ip:unknown"


def test_token_keys_use_the_verified_subject() -> None:
    identify = identify_by("token", TrustedProxies())
    assert identify(scope("198.51.100.9", **{IDENTITY_SCOPE_KEY: Identity(subject="alice", issuer="x")})) == "sub:alice"


def test_token_keys_fall_back_to_the_ip_without_a_subject() -> None:
    identify = identify_by("token", TrustedProxies())
    assert identify(scope("198.51.100.9")) == "ip:198.51.100.9"
    assert identify(scope("198.51.100.9", **{IDENTITY_SCOPE_KEY: {"sub": "alice"}})) == "ip:198.51.100.9"
    # A client cannot become a subject by sending a header: only a verified Identity counts.
    assert identify(scope("198.51.100.9", ("x-upf-sub", "alice"))) == "ip:198.51.100.9"


def test_api_keys_are_hashed_and_fall_back_to_the_ip() -> None:
    identify = identify_by("apiKey", TrustedProxies(), api_key_header="X-Api-Key")
    expected = "key:" + hashlib.sha256(b"secret-1").hexdigest()[:32]
    assert identify(scope("198.51.100.9", ("x-api-key", "secret-1"))) == expected
    assert "secret-1" not in expected
    assert identify(scope("198.51.100.9")) == "ip:198.51.100.9"
    assert identify(scope("198.51.100.9", ("x-api-key", ""))) == "ip:198.51.100.9"


def test_identity_from_settings() -> None:
    settings = RateLimitSettings.model_validate(
        {"keyExtractor": "apiKey", "apiKeyHeader": "x-client-key", "trustedProxies": ["10.0.0.0/8"]}
    )
    identify = identify_from_settings(settings)
    assert identify(scope("10.0.0.1", xff("203.0.113.7"))) == "ip:203.0.113.7"
    assert identify(scope("10.0.0.1", ("x-client-key", "k"))).startswith("key:")


def test_unknown_extractor_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown key extractor"):
        identify_by("cookie", TrustedProxies())
