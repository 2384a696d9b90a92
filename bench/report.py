"""report — medians over rounds, ratios to direct and to nginx, the project's goals for
cutover, and the printed table. Pure functions over the figures run.py collected.
"""

from __future__ import annotations

import statistics

# (label, metric, comparison, bound, relative to nginx?) — SPEC §11 / the project's targets
GOALS = (
    ("req/s >= 0.8x nginx", "rps", ">=", 0.8, True),
    ("p99 <= 1.5x nginx", "p99_ms", "<=", 1.5, True),
    ("CPU/request <= 2x nginx", "cpu_us_per_req", "<=", 2.0, True),
    ("RSS at 1k idle < 60 MB", "rss_1k_mb", "<", 60.0, False),
)
_COMPARE = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
_MEDIAN_KEYS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu_pct", "load_cpu_busy_pct",
                "foreign_cpu_pct", "requests")


def target_summary(rounds: list[dict], memory: dict | None) -> dict:
    """target_summary returns the medians over rounds, total errors, req/s spread and memory."""
    summary: dict = {"rounds": len(rounds)}
    if rounds:
        for key in _MEDIAN_KEYS:
            values = [r[key] for r in rounds if r.get(key) is not None]
            summary[key] = statistics.median(values) if values else None
        rps = [r["rps"] for r in rounds]
        summary["rps_best"] = max(rps)
        summary["rps_spread_pct"] = (max(rps) - min(rps)) / summary["rps"] * 100
        summary["errors"] = sum(r["errors"] for r in rounds)
    if memory:
        summary.update(memory)
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(summaries: dict[str, dict]) -> dict[str, dict]:
    """ratios: req/s vs direct for every proxy; req/s, p99 and CPU/request vs nginx."""
    direct, nginx = summaries.get("direct", {}), summaries.get("nginx", {})
    out = {}
    for name, s in summaries.items():
        if name == "direct" or "rps" not in s:
            continue
        r = {"rps_vs_direct": _ratio(s["rps"], direct.get("rps"))}
        if name != "nginx":
            r["rps_vs_nginx"] = _ratio(s["rps"], nginx.get("rps"))
            r["p99_vs_nginx"] = _ratio(s["p99_ms"], nginx.get("p99_ms"))
            r["cpu_vs_nginx"] = _ratio(s["cpu_us_per_req"], nginx.get("cpu_us_per_req"))
        out[name] = r
    return out


def goals(summaries: dict[str, dict], subject: str = "cutover") -> list[dict]:
    """goals evaluates the project's targets for subject: PASS, FAIL or n/a (not measured)."""
    s, nginx = summaries.get(subject, {}), summaries.get("nginx", {})
    out = []
    for label, metric, op, bound, relative in GOALS:
        value = s.get(metric)
        limit = bound * nginx[metric] if relative and metric in nginx else (
            None if relative else bound)
        if value is None or limit is None:
            missing = subject if value is None else "nginx"
            out.append({"goal": label, "value": value, "limit": limit, "result": "n/a",
                        "why": f"{missing} was not measured"})
            continue
        out.append({"goal": label, "value": value, "limit": limit,
                    "ratio": value / nginx[metric] if relative and nginx[metric] else None,
                    "result": "PASS" if _COMPARE[op](value, limit) else "FAIL"})
    return out


# ---------------------------------------------------------------- text rendering

def _fmt(value, spec: str, suffix: str = "") -> str:
    """_fmt formats value with spec; a missing value is a "-" in the same width."""
    if value is None:
        return f"{'-':>{int(spec.split('.')[0])}}{' ' * len(suffix)}"
    return f"{value:{spec}}{suffix}"


def _figures_table(order: list[str], summaries: dict, failures: dict) -> list[str]:
    header = (f"{'target':<9}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/req':>11}"
              f"{'CPU':>6}{'load':>6}{'errors':>7}{'RSS idle MB':>12}{'RSS 1k MB':>10}{'spread':>7}"
              f"{'foreign':>8}")
    lines = [header, "-" * len(header)]
    for name in order:
        s = summaries.get(name, {})
        if name in failures and "rps" not in s:
            lines.append(f"{name:<9}  not measured: {failures[name].splitlines()[0]}")
            continue
        lines.append(
            f"{name:<9}{_fmt(s.get('rps'), '9.0f')}{_fmt(s.get('p50_ms'), '8.2f')}"
            f"{_fmt(s.get('p99_ms'), '8.2f')}{_fmt(s.get('cpu_us_per_req'), '11.1f')}"
            f"{_fmt(s.get('cpu_pct'), '5.0f', '%')}{_fmt(s.get('load_cpu_busy_pct'), '5.0f', '%')}"
            f"{_fmt(s.get('errors'), '7d')}"
            f"{_fmt(s.get('rss_idle_mb'), '12.1f')}{_fmt(s.get('rss_1k_mb'), '10.1f')}"
            f"{_fmt(s.get('rps_spread_pct'), '6.0f', '%')}{_fmt(s.get('foreign_cpu_pct'), '7.0f', '%')}")
    return lines


def _ratios_table(order: list[str], table: dict) -> list[str]:
    header = (f"{'ratios':<9}{'req/s vs direct':>17}{'req/s vs nginx':>16}"
              f"{'p99 vs nginx':>14}{'CPU/req vs nginx':>18}")
    lines = [header, "-" * len(header)]
    for name in order:
        if name not in table:
            continue
        r = table[name]
        lines.append(
            f"{name:<9}{_fmt(r.get('rps_vs_direct'), '16.2f', 'x')}"
            f"{_fmt(r.get('rps_vs_nginx'), '15.2f', 'x')}{_fmt(r.get('p99_vs_nginx'), '13.2f', 'x')}"
            f"{_fmt(r.get('cpu_vs_nginx'), '17.2f', 'x')}")
    return lines


def _goals_lines(results: list[dict]) -> list[str]:
    lines = ["goals (cutover)"]
    for g in results:
        if g["result"] == "n/a":
            detail = g["why"]
        elif g.get("ratio") is not None:
            detail = f"{g['ratio']:.2f}x nginx"
        else:
            detail = f"{g['value']:.1f}"
        lines.append(f"  {g['goal']:<26}{detail:<32}{g['result']}")
    return lines


def render(report: dict) -> str:
    """render returns the whole text report: header, figures, ratios, goals, notes."""
    cfg, order = report["config"], report["order"]
    pin = report["pinning"]
    pinning = (f"proxy on CPU {pin['proxy_cpu']}, wrk + backend on CPU {pin['load_cpu']}"
               if pin["enabled"] else "NO CPU pinning (see warning)")
    lines = [
        f"cutover bench: {cfg['rounds']} round(s) x {cfg['duration']:g}s, "
        f"{cfg['connections']} connections, wrk -t1, warm-up {cfg['warmup']:g}s; {pinning}",
        "  " + "; ".join(report["versions"].values()),
        "  medians over rounds; errors = total over rounds; spread = (max-min)/median req/s;",
        "  CPU = the proxy's processes (direct: the backend's), per request and in % of a core;",
        "  load = how busy the load CPU (wrk + backend) was: near 100% the load side limits;",
        f"  RSS 1k = holding {cfg['idle_connections']} idle keep-alive connections;",
        f"  foreign = CPU taken by other processes on the pinned CPUs (> {cfg['foreign_limit']:g}%: "
        f"disturbed, measured again up to {cfg['retry_disturbed']} times)",
        "",
        *_figures_table(order, report["targets"], report["failures"]),
        "",
        *_ratios_table(order, report["ratios"]),
        "",
        *_goals_lines(report["goals"]),
    ]
    notes = report["notes"] + [f"{name}: {msg}" for name, msg in report["failures"].items()]
    if notes:
        lines += ["", "notes"] + ["  " + n.replace("\n", "\n    ") for n in notes]
    return "\n".join(lines)
