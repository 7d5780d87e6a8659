"""bench/conformance.py's judging and table on canned answers (the run itself starts servers and Node,
and is not part of the suite): the shared case checks decide each cell, and a failed cell says what
the client's user saw."""

from __future__ import annotations

from typing import Any

from bench import conformance
from tests.support.interop_cases import CASE_BY_NAME, TEST_STATUS_MESSAGE, zeros


def answer(name: str, code: int, message: str = "", messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "code": code, "message": message, "headers": {}, "trailers": {}, "messages": messages or []}


def test_cells_say_pass_or_what_the_user_saw() -> None:
    empty_ok = answer("empty_unary", 0, messages=[{}])
    # What @connectrpc/connect-node reports behind Traefik for a trailers-only error (traefik#13842).
    connect_error = answer(
        "status_code_and_message_unary", 2, "protocol error: missing output message for unary method"
    )
    status_ok = answer("status_code_and_message_unary", 2, TEST_STATUS_MESSAGE)
    results = [
        conformance.judge(CASE_BY_NAME["empty_unary"], "connect", "gateway", empty_ok),
        conformance.judge(CASE_BY_NAME["empty_unary"], "connect", "traefik", empty_ok),
        conformance.judge(CASE_BY_NAME["status_code_and_message_unary"], "connect", "gateway", status_ok),
        conformance.judge(CASE_BY_NAME["status_code_and_message_unary"], "connect", "traefik", connect_error),
    ]

    table = conformance.render_table(results).splitlines()

    assert table[0] == "| case | connect / gateway | connect / Traefik |"
    assert table[2] == "| empty_unary | pass | pass |"
    assert table[3] == (
        "| status_code_and_message_unary | pass | UNKNOWN: 'protocol error: missing output message for unary method' |"
    )
    assert table[4] == "| passed | **2/2** | **1/2** |"
    assert conformance.gateway_failures(results) == []
    assert conformance.verdict(results) == "The gateway passed every case."
    assert conformance.verdict(results[1::2]) == "The gateway was not run (--only-proxy)."


def test_a_failed_gateway_cell_is_a_failure_and_payloads_are_left_out_of_the_json() -> None:
    # The right status, but the echoed header missing; and a 5-byte payload kept as its size only.
    seen = answer("custom_metadata_unary", 0, messages=[{"payload": {"type": "COMPRESSABLE", "body": zeros(5)}}])
    result = conformance.judge(CASE_BY_NAME["custom_metadata_unary"], "protobuf-ts", "gateway", seen)

    assert not result["pass"]
    assert "messages of [5] bytes" in result["saw"]
    assert result["answer"]["messages"] == [{"payload": {"type": "COMPRESSABLE", "bodyBytes": 5}}]
    assert conformance.gateway_failures([result]) == [result]
    assert conformance.verdict([result]) == "The gateway FAILED 1 case(s): custom_metadata_unary (protobuf-ts)"
    # A client that never answered: its failure is the cell, whatever the case expects.
    hung = {**answer("empty_unary", 0), "code": None, "failure": "the client did not finish within 20 s"}
    assert conformance.judge(CASE_BY_NAME["empty_unary"], "grpc-web", "traefik", hung)["saw"] == hung["failure"]


def test_cells_escape_table_syntax_and_stay_short() -> None:
    long = {"pass": False, "saw": "a | b\n" + "x" * 200}

    text = conformance.cell(long)

    assert text.startswith("a \\| b ")
    assert len(text) <= conformance.CELL_CHARS + 2
