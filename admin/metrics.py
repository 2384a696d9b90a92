"""Prometheus metrics, read from the data plane's own counters at scrape time.

The per-request path only bumps plain integers on the data plane (responses by
status class, a latency histogram, requests and upstream errors per server, bytes,
requests refused before routing); each scrape takes one snapshot of them
(DataPlane.snapshot) and turns it, with the controller's switch, drain, gate and
analysis counts, into metric families. Nothing prometheus-client does runs per request.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

from proxy import LATENCY_BUCKETS
from proxy import build as data_plane_build

if TYPE_CHECKING:
    from proxy import Snapshot

    from .controller import Controller

CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
ANALYSIS_OUTCOMES = ("passed", "rolled_back", "cancelled", "failed")


class CutoverCollector:
    """CutoverCollector: one prometheus-client collector over the data plane's snapshots and the Controller."""

    def __init__(self, snapshot: Callable[[], "Snapshot"], controller: "Controller") -> None:
        self.snapshot = snapshot
        self.controller = controller

    def collect(self):
        snapshot = self.snapshot()
        router = snapshot.router
        route = router.route
        requests = CounterMetricFamily("cutover_requests", "Finished requests by environment and status class "
                                       "(none = the connection was cut before a response)",
                                       labels=["environment", "code_class"])
        latency = HistogramMetricFamily("cutover_request_duration_seconds",
                                        "Time from request head to end of response", labels=["environment"])
        inflight = GaugeMetricFamily("cutover_inflight_requests", "Requests in flight", labels=["environment"])
        upstream = GaugeMetricFamily("cutover_upstream_connections", "Open connections to the servers",
                                     labels=["environment"])
        live = GaugeMetricFamily("cutover_live", "1 for the live environment", labels=["environment"])
        weight = GaugeMetricFamily("cutover_weight_ratio", "Share of new requests sent to the environment, 0..1",
                                   labels=["environment"])
        healthy = GaugeMetricFamily("cutover_server_healthy", "1 while a server passes its health checks",
                                    labels=["environment", "server"])
        server_requests = CounterMetricFamily("cutover_server_requests", "Finished requests sent to a server",
                                              labels=["environment", "server"])
        upstream_errors = CounterMetricFamily("cutover_upstream_errors", "Failed exchanges with a server, by kind "
                                              "(connect, timeout, reset, invalid, head_too_large, stray_bytes)",
                                              labels=["environment", "server", "kind"])
        received = CounterMetricFamily("cutover_received_bytes", "Bytes received from clients for the environment",
                                       labels=["environment"])
        sent = CounterMetricFamily("cutover_sent_bytes", "Bytes sent to clients from the environment",
                                   labels=["environment"])
        for env in router.environments:
            name = env.name
            for index, count in enumerate(env.responses):
                requests.add_metric([name, CLASSES[index]], count)
            buckets, total = [], 0
            for bound, count in zip(LATENCY_BUCKETS, env.latency_counts):
                total += count
                buckets.append((repr(bound), total))
            buckets.append(("+Inf", total + env.latency_counts[-1]))
            latency.add_metric([name], buckets, env.latency_sum)
            inflight.add_metric([name], env.inflight)
            upstream.add_metric([name], env.connections)
            live.add_metric([name], 1 if name == route.live else 0)
            weight.add_metric([name], route.weights.get(name, 0) / 100)
            received.add_metric([name], env.bytes_in)
            sent.add_metric([name], env.bytes_out)
            for server in env.servers:
                healthy.add_metric([name, server.address], 1 if server.healthy else 0)
                server_requests.add_metric([name, server.address], server.requests)
                for kind, count in server.upstream_errors:
                    upstream_errors.add_metric([name, server.address, kind], count)
        unrouted = CounterMetricFamily("cutover_unrouted_requests", "Requests answered by cutover itself before "
                                       "reaching an environment (bad requests, hold overflow), by status class",
                                       labels=["code_class"])
        for index, count in enumerate(snapshot.unrouted):
            unrouted.add_metric([CLASSES[index]], count)
        yield from (requests, latency, inflight, upstream, live, weight, healthy, server_requests, upstream_errors,
                    received, sent, unrouted)

        yield GaugeMetricFamily("cutover_client_connections", "Open client connections",
                                value=snapshot.client_connections)
        yield GaugeMetricFamily("cutover_route_generation", "Generation of the live route", value=route.generation)
        store = self.controller.store.info()
        yield GaugeMetricFamily("cutover_store_connected", "1 while the state store answers (always 1 for a file)",
                                value=1 if store.get("connected", True) else 0)
        workers = self.controller.plane.workers_info()
        yield GaugeMetricFamily("cutover_workers", "Data-plane worker processes serving traffic",
                                value=sum(1 for w in workers if w.alive))
        yield CounterMetricFamily("cutover_worker_restarts", "Worker processes restarted after they exited",
                                  value=sum(w.restarts for w in workers))
        yield CounterMetricFamily("cutover_access_log_dropped_lines", "Access log lines lost: the writer was "
                                  "16 MiB behind, or the file would not open or take a write",
                                  value=snapshot.access_log_dropped)
        yield CounterMetricFamily("cutover_tls_handshake_failures", "Client TLS handshakes refused on listen and "
                                  "preview_listen (not TLS, no common version or cipher, a broken hello)",
                                  value=snapshot.tls_handshake_failures)
        yield CounterMetricFamily("cutover_tls_connections_over_limit", "Client TLS connections closed as they "
                                  "were accepted: limits.max_connections handshakes were in flight",
                                  value=snapshot.tls_over_limit)
        yield GaugeMetricFamily("cutover_held", "1 while new requests are held", value=1 if router.held else 0)
        yield GaugeMetricFamily("cutover_held_requests", "Requests waiting in the hold", value=router.held_requests)
        yield GaugeMetricFamily("cutover_fenced_requests", "Requests waiting until this fleet replica's lease is "
                                "confirmed", value=router.fenced_requests)
        yield GaugeMetricFamily("cutover_locked", "1 while switching is locked",
                                value=1 if self.controller.state.locked else 0)
        switches = CounterMetricFamily("cutover_switches", "Route switches by kind", labels=["action"])
        for action, count in self.controller.counts.items():
            switches.add_metric([action], count)
        yield switches
        drains = CounterMetricFamily("cutover_drain_requests", "In-flight requests at a switch, by how they ended",
                                     labels=["outcome"])
        for outcome, count in self.controller.drain_counts.items():
            drains.add_metric([outcome], count)
        yield drains
        yield GaugeMetricFamily("cutover_draining", "Drains still running", value=len(router.drains))
        gates = CounterMetricFamily("cutover_gate_checks", "Pre-switch gate runs by gate and result",
                                    labels=["gate", "result"])
        for (gate, result), count in sorted(self.controller.gate_counts.items()):
            gates.add_metric([gate, result], count)
        yield gates
        reloads = CounterMetricFamily("cutover_reloads", "Config reloads (SIGHUP, POST /v1/reload) by result",
                                      labels=["result"])
        for result, count in self.controller.reload_counts.items():
            reloads.add_metric([result], count)
        yield reloads
        analysis = self.controller.analysis
        yield GaugeMetricFamily("cutover_analysis_running", "1 while a post-flip analysis watches the live environment",
                                value=1 if analysis is not None and analysis.state == "running" else 0)
        outcomes = CounterMetricFamily("cutover_analyses", "Finished post-flip analyses by outcome",
                                       labels=["outcome"])
        for outcome in ANALYSIS_OUTCOMES:
            outcomes.add_metric([outcome], self.controller.analysis_counts.get(outcome, 0))
        yield outcomes
        if self.controller.last_recovery_ms is not None:
            yield GaugeMetricFamily("cutover_last_rollback_recovery_seconds",
                                    "Time from the last rollback call to the swap being applied",
                                    value=self.controller.last_recovery_ms / 1000)


def build_info() -> InfoMetricFamily:
    """build_info: cutover_build_info{version, data_plane, python}, as Prometheus' own build_info."""
    try:
        version = importlib.metadata.version("cutover")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    info = InfoMetricFamily("cutover_build", "The running cutover: version and how its data plane is built")
    info.add_metric([], {"version": version, "data_plane": data_plane_build(),
                         "python": platform.python_version()})
    return info


class _Constant:
    """_Constant: a collector answering the same families on every scrape."""

    def __init__(self, *families) -> None:
        self.families = families

    def collect(self):
        return self.families


def make_registry(snapshot: Callable[[], "Snapshot"], controller: "Controller") -> CollectorRegistry:
    """make_registry: cutover's collector, its build info and the process's CPU, memory, fds and GC."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CutoverCollector(snapshot, controller))
    registry.register(_Constant(build_info()))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """render: the Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
