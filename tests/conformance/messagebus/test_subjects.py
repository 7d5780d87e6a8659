"""Subject rules every bus follows (plugins/messagebus/subjects.py): NATS wildcards, reply subjects out
of reach of wildcards, and consumer names that keep namespaces apart."""

from __future__ import annotations

import pytest

from plugins.messagebus.plugin import settings_from_config
from plugins.messagebus.subjects import InvalidInput, check_filter, check_subject, consumer_name, matches


@pytest.mark.parametrize(
    ("filter_", "subject", "expected"),
    [
        ("order.created", "order.created", True),
        ("order.*", "order.created", True),
        ("order.*", "order.created.eu", False),
        ("order.>", "order.created.eu", True),
        ("order.>", "order", False),
        (">", "order", True),
        ("*.created", "order.created", True),
        (">", "_INBOX.abc", False),
        ("_INBOX.abc", "_INBOX.abc", True),
    ],
)
def test_matching(filter_: str, subject: str, expected: bool) -> None:
    assert matches(check_filter(filter_), check_subject(subject)) is expected


@pytest.mark.parametrize("bad", ["", "a..b", "a.", "a b", "a.>.b", "_INBOX.>", "_INBOX.*", "x" * 257])
def test_bad_filters_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"^subject: "):
        check_filter(bad)


def test_consumer_names_of_two_namespaces_never_meet() -> None:
    # A plugin id holds no "_" (manifest rule): the name up to the first "__" is the namespace, whatever
    # the durable or queue group is called.
    for namespace in ("orders", "orders-d", "a"):
        for name in ("x", "d__x", "__", "a__q__b"):
            assert consumer_name(namespace, "d", name).split("__", 1)[0] == namespace
    assert consumer_name("a", "d", "x") != consumer_name("a", "q", "x")


def test_deployment_config_names_a_wrong_key() -> None:
    settings = settings_from_config("nats", {"url": "nats://10.0.0.1:4222", "prefix": "prod.bus"})
    assert (settings.url, settings.prefix) == ("nats://10.0.0.1:4222", "prod.bus")
    with pytest.raises(ValueError, match=r"^infrastructure\.messageBus\.config\.servers: not a setting"):
        settings_from_config("redis", {"servers": ["x"]}, "infrastructure.messageBus.config")
    with pytest.raises(ValueError, match=r"config\.url: a non-empty string"):
        settings_from_config("rabbitmq", {"url": 5})
