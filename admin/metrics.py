"""Prometheus metrics, read from the data plane's own counters at scrape time.

The per-request path only bumps plain integers on Environment (responses by
status class, a latency histogram) and on Proxy (requests refused before
routing); this collector turns them, the route, health, drains and the
controller's switch counts into metric families when /metrics is scraped.
Nothing prometheus-client does runs per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from proxy.backends import LATENCY_BUCKETS

if TYPE_CHECKING:
    from proxy.server import Proxy

    from .controller import Controller

CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


class CutoverCollector:
    """CutoverCollector: one prometheus-client collector over a Proxy and its Controller."""

    def __init__(self, proxy: "Proxy", controller: "Controller") -> None:
        self.proxy = proxy
        self.controller = controller

    def collect(self):
        router = self.proxy.router
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
        weight = GaugeMetricFamily("cutover_weight_percent", "Share of new requests", labels=["environment"])
        healthy = GaugeMetricFamily("cutover_server_healthy", "1 while a server passes its health checks",
                                    labels=["environment", "server"])
        for name, env in router.environments.items():
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
            weight.add_metric([name], route.weights.get(name, 0))
            for server in env.servers:
                healthy.add_metric([name, server.address], 1 if server.healthy else 0)
        for index, count in enumerate(self.proxy.unrouted):
            requests.add_metric(["", CLASSES[index]], count)
        yield from (requests, latency, inflight, upstream, live, weight, healthy)

        yield GaugeMetricFamily("cutover_client_connections", "Open client connections",
                                value=len(self.proxy.connections))
        yield GaugeMetricFamily("cutover_route_generation", "Generation of the live route", value=route.generation)
        yield GaugeMetricFamily("cutover_held", "1 while new requests are held", value=1 if router.held else 0)
        yield GaugeMetricFamily("cutover_held_requests", "Requests waiting in the hold", value=router.held_requests)
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
        if self.controller.last_recovery_ms is not None:
            yield GaugeMetricFamily("cutover_last_rollback_recovery_seconds",
                                    "Time from the last rollback call to the swap being applied",
                                    value=self.controller.last_recovery_ms / 1000)


def make_registry(proxy: "Proxy", controller: "Controller") -> CollectorRegistry:
    """make_registry: a registry holding only cutover's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CutoverCollector(proxy, controller))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """render: the Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
