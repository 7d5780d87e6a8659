"""run_attempts(): the one attempts driver, with breaker reporting and the two kinds of retry.

A codec gives it `attempt(replica, timeout)`: one try of the call on one replica, which relays
the answer to the client and returns how the call ended, or hands back a `Refused` when the
replica refused the call before anything reached the client (the codec has answered nothing
yet: `Refused.answer` does that, if no other replica takes the call). The driver reports every
attempt's status to its replica's circuit breaker, and tries another replica when one of these
holds:

- transparent retry: the replica processed nothing of the call (`Refused.unsent`: no connection,
  a connection that could not take a new stream, or one whose GOAWAY or REFUSED_STREAM refused
  the call's stream). Running the call elsewhere cannot run it twice, whatever the method; this
  is gRPC's own transparent retry. A call gets at
  most as many as its service has other replicas, outside the retry budget (a call that fails
  everywhere costs each replica about one refused connection attempt, not a storm).
- policy retry (gateway/upstream/retry.py): the method is idempotent, the codec holds the whole
  request (`resendable`), the status was UNAVAILABLE, and the budget and `maxAttempts` allow it.

The call's deadline covers every attempt. The call's record (gateway/telemetry/) gets a span per
attempt, whose trace context the attempt's upstream request carries, and ends with the call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.proxy.admission import Admitted
from gateway.proxy.config import ProxyConfig
from gateway.upstream.pool import Replica, Route

__all__ = ["Attempt", "Refused", "run_attempts"]


class Refused:
    """An attempt the replica refused before anything reached the client."""

    __slots__ = ("answer", "code", "unsent")

    def __init__(self, code: grpc.StatusCode, answer: Callable[[], Awaitable[None]], *, unsent: bool = False) -> None:
        self.code = code  # what the replica's breaker learns
        self.answer = answer  # tells the client, when no other replica is tried
        self.unsent = unsent  # the replica processed nothing of the call (it may not have seen it)

    @classmethod
    def raising(cls, error: GatewayError, *, unsent: bool = False) -> Refused:
        """A refusal whose answer is `error`, raised for the codec to render."""

        async def answer() -> None:
            raise error

        return cls(error.code, answer, unsent=unsent)


Attempt = Callable[[Replica, float | None], Awaitable[grpc.StatusCode | Refused]]


def _other(route: Route, failed: Replica) -> Replica | None:
    try:
        return route.pick(avoid=failed)
    except UpstreamUnavailable:
        return None  # every other replica's breaker is open


async def run_attempts(
    config: ProxyConfig, admitted: Admitted, timeout: float | None, attempt: Attempt, *, resendable: bool
) -> grpc.StatusCode:
    """Run the call on replicas of `admitted.route` until one answers; how the call ended.

    `resendable`: the codec holds the whole request and can send it again (policy retries)."""
    code = grpc.StatusCode.CANCELLED  # unless the call ends otherwise
    try:
        code = await _run(config, admitted, timeout, attempt, resendable)
        return code
    except GatewayError as exc:  # a refusal's answer, raised for the codec to render
        code = exc.code
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL  # the codec logs it and answers INTERNAL
        raise
    finally:
        admitted.record.end(code)


async def _run(
    config: ProxyConfig, admitted: Admitted, timeout: float | None, attempt: Attempt, resendable: bool
) -> grpc.StatusCode:
    route = admitted.route
    record = admitted.record
    # Picked last: a replica's breaker may hand out a half-open probe, which must be reported on.
    replica = route.pick()
    retries = config.retries if admitted.idempotent and resendable else None
    if retries is not None:
        retries.budget.deposit()
    deadline = None if timeout is None else config.clock() + timeout
    transparent_left = len(route.endpoints) - 1
    attempts = 1  # the first one and the policy retries: held to retries.maxAttempts
    while True:
        ended: grpc.StatusCode | Refused = grpc.StatusCode.CANCELLED  # the breaker learns nothing, unless set
        traced = record.attempt(replica.address, attempts + len(route.endpoints) - 1 - transparent_left)
        try:
            ended = await attempt(replica, timeout)
        finally:
            code = ended.code if isinstance(ended, Refused) else ended
            record.attempt_ended(traced, code)
            replica.report(code)
        if not isinstance(ended, Refused):
            if retries is not None and attempts > 1:  # a policy retry took place
                retries.finished(ended)
            return ended
        retry: Replica | None = None
        if ended.code is grpc.StatusCode.UNAVAILABLE:
            if ended.unsent and transparent_left > 0:
                transparent_left -= 1
                retry = _other(route, replica)
            elif retries is not None and attempts < retries.max_attempts:
                retry = retries.next_replica(route, replica)
                attempts += retry is not None
        if retry is not None and deadline is not None and (timeout := deadline - config.clock()) <= 0:
            retry.report(grpc.StatusCode.CANCELLED)
            retry = None
        if retry is None:
            await ended.answer()
            return ended.code
        replica = retry
