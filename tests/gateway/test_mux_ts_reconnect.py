"""The shell SDK's MuxClient (shell-web/sdk) when its gateway goes away: real gateway processes,
drained (SIGTERM), killed and started again on the same port, driven from Node by
tests/js/mux-session.mjs, one client for the whole test.

Choices pinned here (shell-web/sdk/README.md describes them):

- After the gateway's GOAWAY the calls it took run to their end on the old socket, which is closed
  once the last one has ended; new calls open one new socket, shared by those that come together.
- A call whose OPEN crossed the GOAWAY (its id is above the GOAWAY's last stream id) never reached
  the backend: when its requests were all at hand (an array) it is sent again, once, on a new
  socket, and the backend sees it exactly once; when they are an async iterable it fails at once
  with UNAVAILABLE, saying that it was not processed.
- A socket lost without GOAWAY fails its calls with UNAVAILABLE. The next call tries again at once;
  after a failed attempt the next one waits (a growing delay) and calls meanwhile fail at once
  with UNAVAILABLE, so a gateway that is down sees a few attempts, not one per call.
- Calls waiting for a socket keep their deadline and abort signal; an attempt ends after
  connectTimeoutMs.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import NodeSession, node_session, require_node
from tests.support.processes import ROOT, Gateway, free_port, run_gateway, wait_until

SDK_BUILD = ROOT / "shell-web" / "sdk" / "dist" / "mux.js"
OK, CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE = 0, 1, 4, 14
SHUTTING_DOWN = "the gateway is shutting down"
NOT_PROCESSED = (
    f"the gateway went away before it took this call ({SHUTTING_DOWN}); the call was not processed and may be retried"
)


@pytest.fixture(scope="module")
def node() -> str:
    path = require_node(("ws", "@bufbuild/protobuf"))
    if not SDK_BUILD.is_file():
        pytest.fail(f"{SDK_BUILD} is missing: run `make test` (it runs npm ci and npm run build in shell-web/sdk)")
    return path


@contextmanager
def own_gateway(probe_address: str, work_dir: Path, port: int) -> Iterator[Gateway]:
    """A gateway of the test's own on `port`, which the test stops (and starts again there)."""
    config = {"upstreams": {"accept.v1.Probe": [probe_address]}, "websocket": {"drainGrace": 30}}
    with run_gateway(config, work_dir, http_port=port) as gateway:
        yield gateway


@contextmanager
def mux_session(node: str, url: str, probe_gen: Path, work_dir: Path, **options: Any) -> Iterator[NodeSession]:
    args = [url, str(probe_gen / "probe.binpb"), json.dumps(options)]
    with node_session(node, "mux-session.mjs", args, work_dir / f"mux-session-{uuid.uuid4().hex[:8]}.log") as session:
        yield session


def mux_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/api/mux"


def unary(payload: bytes, key: str = "", **call: Any) -> dict[str, Any]:
    """A Unary call; the probe counts the calls it sees with a `key` (Observe)."""
    request = {"payload": b64(payload), **({"key": key} if key else {})}
    return {"kind": "unary", "method": "Unary", "request": request, **call}


def held_stream(name: str) -> dict[str, Any]:
    """Three replies; the probe waits for a Release(name) after each."""
    return {"kind": "serverStream", "method": "ServerStream", "request": {"count": 3, "key": name, "waitRelease": True}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def payload(outcome: dict[str, Any]) -> bytes:
    return base64.b64decode(outcome["replies"][0]["payload"])


def release(pb: Any, probe_stub: Any, name: str, times: int) -> None:
    for _ in range(times):
        probe_stub.Release(pb.Key(key=name), timeout=5)


def refused(port: int) -> bool:
    """Nothing listens on the port (any more)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def exited(gateway: Gateway) -> int:
    return wait_until(lambda: gateway.process.popen.poll() is not None, timeout=20, what="the gateway to exit") and (
        gateway.process.popen.returncode
    )


def test_after_goaway_a_stream_runs_on_while_new_calls_share_one_new_socket(
    node: str, probe_gen: Path, probe_address: str, work_dir: Path, pb: Any, probe_stub: Any
) -> None:
    name = f"ts-{uuid.uuid4().hex}"
    port = free_port()
    with (
        own_gateway(probe_address, work_dir, port) as first,
        mux_session(node, mux_url(port), probe_gen, work_dir) as mux,
    ):
        mux.ask("call", name="long", **held_stream(name))
        assert mux.ask("replies", name="long", count=1) == {"replies": 1, "ended": False}
        os.kill(first.process.pid, signal.SIGTERM)
        assert mux.ask("goaway") == {"lastStreamId": 1, "reason": SHUTTING_DOWN}

        # The first gateway's listener is closed: the second one takes the port while the first
        # one still serves its stream.
        with own_gateway(probe_address, work_dir, port):
            for n in range(8):
                mux.ask("call", name=f"new {n}", **unary(f"new {n}".encode()))
            new = [mux.ask("wait", name=f"new {n}") for n in range(8)]
            assert [(call["code"], payload(call)) for call in new] == [(OK, f"new {n}".encode()) for n in range(8)]
            old, fresh = mux.ask("sockets")  # exactly two: the new calls opened one socket together
            assert (old["closeCode"], fresh["opened"], fresh["closeCode"]) == (None, True, None)

            release(pb, probe_stub, name, 3)
            long = mux.ask("wait", name="long")
            assert (long["code"], [reply["index"] for reply in long["replies"]]) == (OK, [0, 1, 2])

            def old_closed() -> list[Any] | None:
                sockets: list[dict[str, Any]] = mux.ask("sockets")
                return None if sockets[0]["closeCode"] is None else [s["closeCode"] for s in sockets]

            closes = wait_until(old_closed, what="the old socket to close once its last stream ended")
            assert closes[0] in (1000, 1001)
            assert closes[1:] == [None]
            assert exited(first) == 0


def test_calls_that_cross_the_goaway_are_sent_again_once_unless_their_requests_are_streamed(
    node: str, probe_gen: Path, probe_address: str, work_dir: Path, pb: Any, probe_stub: Any
) -> None:
    name, unary_key, stream_key = (f"ts-{uuid.uuid4().hex}" for _ in range(3))
    port = free_port()
    go = work_dir / f"go-{uuid.uuid4().hex}"
    with (
        own_gateway(probe_address, work_dir, port) as first,
        mux_session(node, mux_url(port), probe_gen, work_dir) as mux,
    ):
        mux.ask("call", name="long", **held_stream(name))
        assert mux.ask("replies", name="long", count=1) == {"replies": 1, "ended": False}
        # The client reads nothing until `go` exists, then opens these calls on the socket it has:
        # meanwhile the GOAWAY has arrived, unread, and their OPENs cross it.
        crossing = [
            unary(b"crossing", key=unary_key, name="unary"),
            {
                "name": "stream",
                "kind": "serverStream",
                "method": "ServerStream",
                "request": {"count": 2, "key": stream_key},
            },
            {"name": "bidi", "kind": "bidi", "method": "Bidi", "requests": [{"payload": b64(b"b")}], "streamed": True},
        ]
        assert mux.ask("block", untilFile=str(go), calls=crossing) == {"blocking": True}
        os.kill(first.process.pid, signal.SIGTERM)
        wait_until(lambda: refused(port), what="the first gateway to close its listener")

        with own_gateway(probe_address, work_dir, port):
            go.touch()
            # The GOAWAY took stream 1 only: the three calls crossed it.
            assert mux.ask("goaway") == {"lastStreamId": 1, "reason": SHUTTING_DOWN}
            # Their requests all at hand, the unary and server-streaming calls went again, on a new
            # socket (the second gateway), and the backend saw each exactly once.
            unary_call, stream_call = mux.ask("wait", name="unary"), mux.ask("wait", name="stream")
            assert (unary_call["code"], stream_call["code"]) == (OK, OK), (unary_call, stream_call)
            assert payload(unary_call) == b"crossing"
            assert [reply["index"] for reply in stream_call["replies"]] == [0, 1]
            for key in (unary_key, stream_key):
                assert probe_stub.Observe(pb.Key(key=key), timeout=5).started == 1
            # Its requests streamed (and maybe read already), the bidi call is not sent again: it
            # fails at the GOAWAY, not at the end of the drain.
            bidi = mux.ask("wait", name="bidi")
            assert (bidi["code"], bidi["message"], bidi["replies"]) == (UNAVAILABLE, NOT_PROCESSED, [])
            assert bidi["elapsedMs"] < 1000
            old, fresh = mux.ask("sockets")
            assert (old["goaway"], fresh["opened"], fresh["goaway"]) == (True, True, False)

            release(pb, probe_stub, name, 3)
            assert mux.ask("wait", name="long")["code"] == OK
            assert exited(first) == 0


def test_a_killed_gateway_fails_calls_fast_without_being_hammered_and_serves_again_once_back(
    node: str, probe_gen: Path, probe_address: str, work_dir: Path
) -> None:
    port = free_port()
    reconnect = {"initialDelayMs": 200, "maxDelayMs": 800}
    with mux_session(node, mux_url(port), probe_gen, work_dir, lazy=True, reconnect=reconnect) as mux:
        with own_gateway(probe_address, work_dir, port) as first:
            mux.ask("call", name="long", **held_stream(f"ts-{uuid.uuid4().hex}"))
            assert mux.ask("replies", name="long", count=1) == {"replies": 1, "ended": False}
            first.process.stop(signal.SIGKILL)

            lost = mux.ask("wait", name="long")
            assert lost["code"] == UNAVAILABLE
            assert lost["message"].startswith("the connection to the gateway ended before the call did"), lost

            down = mux.ask("repeat", call=unary(b"down", name="down"), everyMs=10, forMs=1500)
            results = down["results"]
            assert len(results) >= 50
            assert {result["code"] for result in results} == {UNAVAILABLE}
            assert max(result["elapsedMs"] for result in results) < 500, "calls fail at once while the gateway is down"
            assert results[0]["message"].startswith(f"no connection to {mux_url(port)}: ")
            assert "the next attempt is in" in results[1]["message"]
            # Attempts at about 0, 0.2, 0.5, 1.0 s (+-20%): a handful, not one per call.
            assert 2 <= down["sockets"] <= 6, down["sockets"]

        with own_gateway(probe_address, work_dir, port):
            back = mux.ask("repeat", call=unary(b"back", name="back"), everyMs=20, untilOk=True)
            # Within the longest delay (800 ms, +20%) of the gateway being back, and on one new socket.
            assert back["results"][-1]["code"] == OK
            assert sum(result["elapsedMs"] + 20 for result in back["results"]) < 2500
            assert back["sockets"] == 1


def test_calls_waiting_for_a_socket_keep_their_deadline_and_abort_and_share_one_attempt(
    node: str, probe_gen: Path, work_dir: Path
) -> None:
    # A port whose connections the kernel accepts but nobody answers: the upgrade never completes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = mux_url(silent.getsockname()[1])
        with mux_session(node, url, probe_gen, work_dir, lazy=True, connectTimeoutMs=1500) as mux:
            mux.ask("call", name="deadline", **unary(b"d", timeoutMs=300))
            mux.ask("call", name="aborted", **unary(b"a", abortAfterMs=100))
            mux.ask("call", name="waiting", **unary(b"w"))
            deadline, aborted, waiting = (mux.ask("wait", name=name) for name in ("deadline", "aborted", "waiting"))
            assert (deadline["code"], aborted["code"], aborted["message"]) == (
                DEADLINE_EXCEEDED,
                CANCELLED,
                "the call was aborted",
            )
            assert 300 <= deadline["elapsedMs"] < 1000
            assert 100 <= aborted["elapsedMs"] < 1000
            assert (waiting["code"], waiting["message"]) == (
                UNAVAILABLE,
                f"no connection to {url}: no answer within 1500 ms",
            )
            assert 1400 <= waiting["elapsedMs"] < 3000  # the attempt began with the first call
            assert len(mux.ask("sockets")) == 1

            # The failed attempt holds the next one back (1 s by default): this call fails at once.
            mux.ask("call", name="next", **unary(b"n"))
            after = mux.ask("wait", name="next")
            assert after["code"] == UNAVAILABLE
            assert after["elapsedMs"] < 200
            assert after["message"].startswith(
                f"no connection to {url}: no answer within 1500 ms; the next attempt is in "
            )
            assert len(mux.ask("sockets")) == 1
