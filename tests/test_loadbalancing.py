"""`type: loadbalancing`: the ring, splitting, and real two-tier fleets on loopback."""

from __future__ import annotations

import os
import random
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import Batch, RequestContext
from gateway.otlp.signals import TRACES
from gateway.sinks.loadbalancing import Ring, split_by_owner
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

PROTO = {"Content-Type": "application/x-protobuf"}


# -- the ring --------------------------------------------------------------------------------


def test_the_ring_depends_only_on_the_sorted_list_and_moves_about_one_nth_of_the_keys() -> None:
    keys = [os.urandom(16) for _ in range(4000)]
    a = Ring(["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"])
    b = Ring(["10.0.0.3:4317", "10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.1:4317"])
    assert a.digest == b.digest and [a.owner(k) for k in keys] == [b.owner(k) for k in keys]
    shares = Counter(a.owner(k) for k in keys)
    assert all(900 < n < 1800 for n in shares.values()), shares
    c = Ring(a.endpoints + ["10.0.0.4:4317"])
    moved = [k for k in keys if a.owner(k) != c.owner(k)]
    assert all(c.owner(k) == "10.0.0.4:4317" for k in moved)  # keys move only to the newcomer
    assert 0.15 < len(moved) / len(keys) < 0.35  # about 1/4
    # A dead backend's keys go to the next live one; the others stay where they were.
    dead = "10.0.0.2:4317"
    for k in keys[:500]:
        owner = a.owner(k, lambda e: e != dead)
        assert owner != dead and (a.owner(k) == dead or owner == a.owner(k))


def _request(traces: list[bytes], spans_per_trace: int = 3, tag: str = "s") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    scope = rs.scope_spans.add()
    scope.scope.name = "lib"
    for t in traces:
        for i in range(spans_per_trace):
            scope.spans.add(trace_id=t, span_id=os.urandom(8), name=f"{tag}/{t.hex()}/{i}")
    return req


def test_a_request_is_split_by_owner_and_forwarded_whole_when_one_owns_it() -> None:
    ring = Ring(["a:1", "b:1"])
    traces = [os.urandom(16) for _ in range(20)]
    request = _request(traces)
    batch = Batch(request, 60, RequestContext("test"), raw=request.SerializeToString())
    parts = split_by_owner(batch, "traceID", ring.owner)
    assert set(parts) == {"a:1", "b:1"} and sum(p.items for p in parts.values()) == 60
    for endpoint, part in parts.items():
        for rs in part.request.resource_spans:
            assert rs.resource.attributes[0].value.string_value == "svc" and rs.scope_spans[0].scope.name == "lib"
            assert all(ring.owner(s.trace_id) == endpoint for s in rs.scope_spans[0].spans)
    one = [t for t in traces if ring.owner(t) == "a:1"]
    whole = Batch(_request(one), 3 * len(one), RequestContext("test"), raw=b"as received")
    assert split_by_owner(whole, "traceID", ring.owner) == {"a:1": whole}  # the same object, bytes as received
    by_service = split_by_owner(batch, "service", ring.owner)
    assert list(by_service.values()) == [batch]


# -- real fleets -----------------------------------------------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tier2(workdir: Path, port: int, host: str = "127.0.0.1") -> GatewayProcess:
    workdir.mkdir(exist_ok=True)
    config = gateway_config(workdir)
    config["receivers"] = {"grpc": {"endpoint": f"{host}:{port}"}}
    config["sampling"] = {"tail": {"decision_wait": "1500ms", "idle": "0s"}}  # no policies: keep every trace
    return GatewayProcess(config, workdir).wait_ready()


def _tier1(workdir: Path, resolver: dict[str, Any], **sink: Any) -> GatewayProcess:
    workdir.mkdir(exist_ok=True)
    config = gateway_config(workdir)
    config["sinks"] = {"tier2": {
        "type": "loadbalancing", "resolver": resolver, "compression": "none",
        "queue": {"type": "disk", "dir": str(workdir / "queue")},
        "batch": {"max_delay": "50ms"}, "retry": {"initial": "100ms", "max": "500ms", "max_elapsed": "120s"}, **sink}}
    return GatewayProcess(config, workdir).wait_ready()


def _trace_spans(workdirs: list[Path]) -> list[dict[bytes, list[str]]]:
    out = []
    for d in workdirs:
        traces: dict[bytes, list[str]] = {}
        for span in spans_in(read_json_lines(d / "out.jsonl")):
            traces.setdefault(bytes.fromhex(span["name"].split("/")[1]), []).append(span["name"])
        out.append(traces)
    return out


def test_two_tiers_keep_every_trace_whole_at_one_replica_through_a_restart(tmp_path: Path) -> None:
    ports = [_free_port(), _free_port()]
    t2 = [_tier2(tmp_path / f"t2-{i}", p) for i, p in enumerate(ports)]
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    t1 = [_tier1(tmp_path / f"t1-{i}", {"static": {"endpoints": endpoints}}, failover_after=0) for i in range(2)]
    restarted: list[GatewayProcess] = []
    try:
        sent: dict[bytes, int] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                traces = [rng.randbytes(16) for _ in range(5)]
                # Each trace's spans are split across both first-tier replicas.
                ok = all(requests.post(f"{gw.http}/v1/traces", data=_request(traces, 2, f"{k}").SerializeToString(),
                                       headers=PROTO, timeout=10).status_code == 200 for k, gw in enumerate(t1))
                if ok:
                    with lock:
                        sent.update(dict.fromkeys(traces, 4))

        threads = [threading.Thread(target=client, args=(s,)) for s in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(sent) > 100, timeout=30)
        assert t2[1].stop() == 0  # one second-tier replica goes away mid-run...
        wait_for(lambda: len(sent) > 300, timeout=30)
        restarted.append(_tier2(tmp_path / "t2-1", ports[1]))  # ...and comes back on its address
        wait_for(lambda: len(sent) > 500, timeout=30)
        stop.set()
        for t in threads:
            t.join(20)
        got = lambda: _trace_spans([tmp_path / "t2-0", tmp_path / "t2-1"])  # noqa: E731
        wait_for(lambda: sum(len(v) for g in got() for v in g.values()) >= 4 * len(sent), timeout=60, interval=0.3)
        first, second = got()
        assert not set(first) & set(second), "a trace reached both second-tier replicas"
        for tid in sent:
            names = first.get(tid) or second.get(tid)
            assert names is not None and len(set(names)) == 4, f"trace {tid.hex()} incomplete: {names}"
        assert first and second
        # Routing agrees with the ring every replica shows.
        health = [requests.get(f"{gw.admin}/health", timeout=5).json()["sinks"]["tier2"] for gw in t1]
        assert health[0]["ring"] == health[1]["ring"] and sorted(health[0]["backends"]) == sorted(endpoints)
        ring = Ring(endpoints)
        assert all(ring.owner(tid) == endpoints[0] for tid in first)
        assert all(ring.owner(tid) == endpoints[1] for tid in second)
        text = requests.get(f"{t1[0].admin}/metrics", timeout=5).text
        assert f'otelgate_sink_sent_spans_total{{backend="{endpoints[1]}",sink="tier2"}}' in text
        assert metric(t1[0].admin, "otelgate_loadbalancer_backends", sink="tier2", status="up") == 2
    finally:
        for gw in t1 + [t2[0]] + restarted:
            gw.stop()
        t2[1].stop()


@pytest.mark.slow  # ~20 s: a backend dies, fails over and comes back
def test_failover_moves_a_dead_backends_keys_to_the_next_and_back(tmp_path: Path) -> None:
    ports = [_free_port(), _free_port()]
    alive = _tier2(tmp_path / "t2-0", ports[0])
    endpoints = [f"127.0.0.1:{p}" for p in ports]  # the second is not running yet
    t1 = _tier1(tmp_path / "t1", {"static": {"endpoints": endpoints}}, failover_after=2)
    back = None
    try:
        ring = Ring(endpoints)
        rng = random.Random(7)
        traces = [rng.randbytes(16) for _ in range(40)]
        assert {ring.owner(t) for t in traces} == set(endpoints)
        for t in traces:
            assert requests.post(f"{t1.http}/v1/traces", data=_request([t], 2).SerializeToString(), headers=PROTO,
                                 timeout=10).status_code == 200
        wait_for(lambda: requests.get(f"{t1.admin}/health", timeout=5).json()["sinks"]["tier2"]["backends"][endpoints[1]]
                 ["status"] == "down", timeout=20, interval=0.2)
        later = [rng.randbytes(16) for _ in range(40)]
        for t in later:
            assert requests.post(f"{t1.http}/v1/traces", data=_request([t], 2).SerializeToString(), headers=PROTO,
                                 timeout=10).status_code == 200
        got = lambda: _trace_spans([tmp_path / "t2-0"])[0]  # noqa: E731
        # After failover, the dead backend's keys went to the live one; the live one's keys stayed.
        wait_for(lambda: set(later) <= set(got()), timeout=20, interval=0.2)
        assert "backend down; its keys move to the next backend on the ring" in t1.log_text()
        back = _tier2(tmp_path / "t2-1", ports[1])
        wait_for(lambda: "its keys return to it" in t1.log_text(), timeout=20, interval=0.2)
        # What was queued for it before the failover is delivered to it now (disk queue); every trace
        # is whole at exactly one backend, and only the dead backend's keys ever moved.
        both = lambda: _trace_spans([tmp_path / "t2-0", tmp_path / "t2-1"])  # noqa: E731
        wait_for(lambda: set(traces + later) <= set(both()[0]) | set(both()[1]), timeout=30, interval=0.3)
        on_live, on_back = both()
        assert not set(on_live) & set(on_back)
        assert all(ring.owner(t) == endpoints[1] for t in on_back) and on_back
        assert all(len(set(names)) == 2 for names in list(on_live.values()) + list(on_back.values()))
        assert all(t in on_live for t in traces + later if ring.owner(t) == endpoints[0])
        newest = [rng.randbytes(16) for _ in range(20)]
        for t in newest:
            requests.post(f"{t1.http}/v1/traces", data=_request([t], 2).SerializeToString(), headers=PROTO, timeout=10)
        wait_for(lambda: {t for t in newest if ring.owner(t) == endpoints[1]} <= set(_trace_spans([tmp_path / "t2-1"])[0]),
                 timeout=20, interval=0.3)
    finally:
        t1.stop()
        alive.stop()
        if back is not None:
            back.stop()


class _DnsServer:
    """A small authoritative DNS responder on 127.0.0.1 (UDP) whose A records the test changes."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        import dns.message
        import dns.rrset

        self._message, self._rrset = dns.message, dns.rrset
        self.name = name
        self.addresses = addresses
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            query = self._message.from_wire(data)
            response = self._message.make_response(query)
            question = query.question[0]
            self.queries += 1
            if question.name.to_text().rstrip(".") == self.name and question.rdtype == 1:  # A
                response.answer.append(self._rrset.from_text_list(question.name, 1, "IN", "A", list(self.addresses)))
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_dns_resolver_follows_records_that_change_during_the_run(tmp_path: Path) -> None:
    port = _free_port()
    try:
        socket.create_server(("127.0.0.2", port)).close()
    except OSError:
        pytest.skip("127.0.0.2 is not usable on this machine's loopback")
    a = _tier2(tmp_path / "a", port, "127.0.0.1")
    b = _tier2(tmp_path / "b", port, "127.0.0.2")
    server = _DnsServer("tier2.otelgate.test", ["127.0.0.1"])
    t1 = _tier1(tmp_path / "t1", {"dns": {"hostname": "tier2.otelgate.test", "port": port, "interval": "300ms",
                                          "nameserver": server.endpoint}})
    try:
        health = lambda: requests.get(f"{t1.admin}/health", timeout=5).json()["sinks"]["tier2"]  # noqa: E731
        wait_for(lambda: sorted(health()["backends"]) == [f"127.0.0.1:{port}"], timeout=30, interval=0.1)
        first_ring = health()["ring"]
        server.addresses = ["127.0.0.1", "127.0.0.2"]
        wait_for(lambda: len(health()["backends"]) == 2, timeout=30, interval=0.1)
        assert health()["ring"] != first_ring
        traces = [os.urandom(16) for _ in range(30)]
        for t in traces:
            assert requests.post(f"{t1.http}/v1/traces", data=_request([t], 2).SerializeToString(), headers=PROTO,
                                 timeout=10).status_code == 200
        ring = Ring([f"127.0.0.1:{port}", f"127.0.0.2:{port}"])
        wait_for(lambda: {t for t in traces if ring.owner(t).startswith("127.0.0.2")}
                 <= set(_trace_spans([tmp_path / "b"])[0]), timeout=20, interval=0.3)
        assert set(_trace_spans([tmp_path / "a"])[0]) == {t for t in traces if ring.owner(t).startswith("127.0.0.1")}
        server.addresses = ["127.0.0.2"]  # a leaves the list: its share moves to b
        wait_for(lambda: health()["backends"].get(f"127.0.0.1:{port}", {"status": "removed"})["status"] == "removed",
                 timeout=30, interval=0.1)
        assert server.queries > 3
    finally:
        t1.stop()
        server.close()
        a.stop()
        b.stop()
