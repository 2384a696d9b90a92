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
# the switch phase (SPEC §11): failed requests while flipping under load, rollback recovery
RECOVERY_LIMIT_MS = 100.0
# workers: N > 1 (SPEC §9.1, issue 11): CPU per request vs one worker, connection spread
WORKERS_CPU_LIMIT = 1.1
SPREAD_LIMIT_PCT = 20.0
_MEDIAN_KEYS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "root_cpu_us_per_req",
                "idle_per_100_req", "preempted_per_100_req", "cpu_pct", "load_cpu_busy_pct", "foreign_cpu_pct",
                "requests")


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


def goals(summaries: dict[str, dict], subject: str = "cutover",
          rss_subject: str = "cutover") -> list[dict]:
    """goals evaluates the project's targets for subject: PASS, FAIL or n/a (not measured).
    The RSS goal is one process's: with --workers N > 1 run.py evaluates it on cutover1."""
    nginx = summaries.get("nginx", {})
    out = []
    for label, metric, op, bound, relative in GOALS:
        name = rss_subject if metric == "rss_1k_mb" else subject
        s = summaries.get(name, {})
        if name != subject:
            label = f"{label} ({name})"
        value = s.get(metric)
        limit = bound * nginx[metric] if relative and metric in nginx else (
            None if relative else bound)
        if value is None or limit is None:
            missing = name if value is None else "nginx"
            out.append({"goal": label, "value": value, "limit": limit, "result": "n/a",
                        "why": f"{missing} was not measured"})
            continue
        out.append({"goal": label, "value": value, "limit": limit,
                    "ratio": value / nginx[metric] if relative and nginx[metric] else None,
                    "result": "PASS" if _COMPARE[op](value, limit) else "FAIL"})
    return out


def switch_goals(switched: dict | None, why: str | None = None) -> list[dict]:
    """switch_goals: 0 failed requests while flipping under load (wrk's non-2xx/3xx and
    socket errors, with at least one flip applied), and the slowest rollback recovery (first
    probe answer from the previous environment) under RECOVERY_LIMIT_MS."""
    flips = (switched or {}).get("flips")
    rollback = (switched or {}).get("rollback")
    out = []
    if flips is None:
        out.append({"goal": "flip under load: 0 failed", "value": None, "limit": 0,
                    "result": "n/a", "why": why or "not measured"})
    elif not flips["flips"]:
        out.append({"goal": "flip under load: 0 failed", "value": flips["errors"], "limit": 0,
                    "result": "FAIL", "detail": "no flip was applied"})
    else:
        out.append({"goal": "flip under load: 0 failed", "value": flips["errors"], "limit": 0,
                    "result": "PASS" if flips["errors"] == 0 else "FAIL",
                    "detail": f"{flips['errors']} of {flips['requests']}, {flips['flips']} flips"})
    worst = rollback["recovery_ms"]["max"] if rollback else None
    if worst is None:
        out.append({"goal": f"rollback recovery < {RECOVERY_LIMIT_MS:.0f}ms", "value": None,
                    "limit": RECOVERY_LIMIT_MS, "result": "n/a",
                    "why": why or "not measured"})
    else:
        out.append({"goal": f"rollback recovery < {RECOVERY_LIMIT_MS:.0f}ms", "value": worst,
                    "limit": RECOVERY_LIMIT_MS,
                    "result": "PASS" if worst < RECOVERY_LIMIT_MS else "FAIL",
                    "detail": f"max {worst:.1f} ms of {len(rollback['runs'])}"})
    return out


def workers_goals(summaries: dict[str, dict], phases: dict | None, workers: int,
                  why: dict[str, str | None]) -> list[dict]:
    """workers_goals (--workers N > 1): cutover's CPU per request with N workers within
    WORKERS_CPU_LIMIT x of cutover1's (one worker, same run, same CPUs); the keep-alive
    connections spread within SPREAD_LIMIT_PCT of even; through a worker's SIGKILL under
    load, no request failed but those the killed worker held (each wrk connection has at most
    one request in flight, so at most its connections; none refused, none timed out)."""
    out = []
    n, one = summaries.get("cutover", {}), summaries.get("cutover1", {})
    label = f"CPU/req {workers}w <= {WORKERS_CPU_LIMIT}x 1w"
    ratio = _ratio(n.get("cpu_us_per_req"), one.get("cpu_us_per_req"))
    if ratio is None:
        out.append({"goal": label, "value": None, "limit": WORKERS_CPU_LIMIT, "result": "n/a",
                    "why": "cutover or cutover1 was not measured"})
    else:
        out.append({"goal": label, "value": ratio, "limit": WORKERS_CPU_LIMIT,
                    "result": "PASS" if ratio <= WORKERS_CPU_LIMIT else "FAIL",
                    "detail": f"{ratio:.2f}x ({n['cpu_us_per_req']:.1f} vs "
                              f"{one['cpu_us_per_req']:.1f} us)"})
    spread = ((phases or {}).get("spread") or {}).get("keepalive") or {}
    conns = spread.get("connections_by_worker") or {}
    label = f"worker spread within {SPREAD_LIMIT_PCT:.0f}%"
    if conns.get("max_deviation_pct") is None:
        out.append({"goal": label, "value": None, "limit": SPREAD_LIMIT_PCT, "result": "n/a",
                    "why": (why.get("spread") or "not measured").splitlines()[0]})
    else:
        dev = conns["max_deviation_pct"]
        out.append({"goal": label, "value": dev, "limit": SPREAD_LIMIT_PCT,
                    "result": "PASS" if dev <= SPREAD_LIMIT_PCT else "FAIL",
                    "detail": f"max {dev:.1f}% off even, {conns['total']} connections"})
    kill = (phases or {}).get("kill")
    label = "worker kill: 0 failed elsewhere"
    if kill is None:
        out.append({"goal": label, "value": None, "limit": 0, "result": "n/a",
                    "why": (why.get("kill") or "not measured").splitlines()[0]})
    else:
        beyond = kill_failures_beyond(kill)
        out.append({"goal": label, "value": beyond, "limit": 0,
                    "result": "PASS" if beyond == 0 else "FAIL",
                    "detail": f"{kill['errors']} failed, all on its {kill['killed_connections']} "
                              "conns" if beyond == 0 else f"{beyond} of {kill['errors']}"})
        stale = kill["fresh_after_restart"] - kill["fresh_on_live"]
        current = kill["new_generation"] == kill["generation_then"] and not stale
        out.append({"goal": "restarted worker: route current", "value": stale, "limit": 0,
                    "result": "PASS" if current else "FAIL",
                    "detail": f"gen {kill['new_generation']} of {kill['generation_then']}; "
                              f"{stale}/{kill['fresh_after_restart']} fresh not on live"})
    theirs = (phases or {}).get("nginx_kill")
    if kill is not None and theirs is not None:
        # Both lose the requests on the killed worker's own connections: failed per connection it held.
        ours = kill["errors"] / max(1, kill["killed_connections"])
        nginx = theirs["errors"] / max(1, theirs["killed_connections"])
        out.append({"goal": "kill: failed/conn <= nginx", "value": ours, "limit": nginx,
                    "result": "PASS" if ours <= max(nginx, 1.0) else "FAIL",
                    "detail": f"cutover {kill['errors']} on {kill['killed_connections']} conns, nginx "
                              f"{theirs['errors']} on {theirs['killed_connections']} (1 of {workers} killed)"})
    return out


def kill_failures_beyond(kill: dict) -> int:
    """kill_failures_beyond: wrk's failures in the kill phase that the killed worker's own
    connections do not explain: refused or timed-out connections, non-2xx/3xx answers, and
    read/write errors beyond the connections it held (one request in flight on each)."""
    se = kill["socket_errors"]
    on_killed = min(se["read"] + se["write"], kill["killed_connections"])
    return kill["errors"] - on_killed


def workers_notes(phases: dict | None) -> list[str]:
    """workers_notes: what in the workers phases must be 0 or complete and was not."""
    notes = []
    spread = (phases or {}).get("spread") or {}
    for part, label in (("keepalive", "keep-alive"), ("fresh", "fresh connections")):
        if (spread.get(part) or {}).get("errors"):
            notes.append(f"workers: wrk reported {spread[part]['errors']} errors in the "
                         f"{label} spread run (must be 0)")
    kill = (phases or {}).get("kill")
    if kill:
        if not kill["killed_gone"]:
            notes.append(f"workers: the killed worker {kill['killed_pid']} still exists")
        if kill["new_generation"] != kill["generation_then"]:
            notes.append(f"workers: the restarted worker runs generation {kill['new_generation']}"
                         f", the route is at {kill['generation_then']}")
        if kill["fresh_on_live"] < kill["fresh_after_restart"]:
            notes.append(f"workers: after the restart only {kill['fresh_on_live']} of "
                         f"{kill['fresh_after_restart']} requests on fresh connections were served "
                         "by the live environment (must be all: the others went by an old route"
                         + (f"; first error: {kill['fresh_errors'][0]}" if kill["fresh_errors"]
                            else "") + ")")
        for key, label in (("flip_while_down", "the flip while a worker was down"),
                           ("flip_after_restart", "the flip after the restart")):
            f = kill[key]
            want = kill["workers"] - 1 if key == "flip_while_down" else kill["workers"]
            if not f["complete"] or len(f["acked"]) < want:
                notes.append(f"workers: {label} answered {f['status']} with ack complete "
                             f"{f['complete']}, acked {len(f['acked'])} (want {want}), pending "
                             f"{f['pending']}")
    return notes


def switch_notes(switched: dict | None, foreign_limit: float) -> list[str]:
    """switch_notes: what in the switch phase must be 0 or complete and was not, and whether
    other processes disturbed it."""
    notes = []
    for part, label in (("flips", "flips under load"), ("rollback", "rollback recovery")):
        r = (switched or {}).get(part) or {}
        if (r.get("foreign_cpu_pct") or 0) > foreign_limit:
            notes.append(f"switch, {label}: other processes took {r['foreign_proxy_cpu_pct']:.0f}%"
                         f" of the proxy CPU and {r['foreign_load_cpu_pct']:.0f}% of the load CPU;"
                         " figures disturbed")
    flips = (switched or {}).get("flips")
    if flips:
        d = flips["drain"]
        if flips["errors"]:
            notes.append(f"switch: wrk reported {flips['errors']} errors while flipping "
                         "(must be 0)")
        if flips["flips_refused"]:
            first = next(e["error"] for e in flips["events"] if "error" in e)
            notes.append(f"switch: {flips['flips_refused']} flip(s) not applied; first: {first}")
        if d["recorded"] < flips["flips"]:
            notes.append(f"switch: only {d['recorded']} of {flips['flips']} drains were recorded "
                         "in /v1/history in time")
        if d["forced_closed"] or d["dropped"]:
            notes.append(f"switch: drains forced_closed {d['forced_closed']}, dropped "
                         f"{d['dropped']} (must be 0)")
        if flips["next_request_on_new_env"] < flips["flips"]:
            notes.append(f"switch: the request after a flip's 200 was served by the new "
                         f"environment only {flips['next_request_on_new_env']} of "
                         f"{flips['flips']} times (must be every time)")
        if flips.get("workers", 1) > 1:
            if flips["acks_complete"] < flips["flips"]:
                notes.append(f"switch: only {flips['acks_complete']} of {flips['flips']} flips "
                             f"were acked by all {flips['workers']} workers")
            if flips["fresh_on_new_env"] < flips["fresh_requests"]:
                first = next((e["fresh_errors"][0] for e in flips["events"]
                              if e.get("fresh_errors")), "none")
                notes.append(f"switch: of the fresh connections after the flips' 200, "
                             f"{flips['fresh_on_new_env']} of {flips['fresh_requests']} were "
                             f"served by the new environment (must be all; first error: "
                             f"{first})")
    rollback = (switched or {}).get("rollback")
    if rollback and rollback["probe"]["errors"]:
        notes.append(f"switch: the rollback probe had {rollback['probe']['errors']} errors "
                     f"(first: {rollback['probe']['first_error']})")
    return notes


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
        elif g.get("detail"):
            detail = g["detail"]
        elif g.get("ratio") is not None:
            detail = f"{g['ratio']:.2f}x nginx"
        else:
            detail = f"{g['value']:.1f}"
        lines.append(f"  {g['goal']:<35}{detail:<42}{g['result']}")
    return lines


def _foreign_text(r: dict) -> str:
    pct = r.get("foreign_cpu_pct")
    return "" if pct is None else f"; foreign {pct:.0f}%"


def _ms(stats: dict, key: str) -> str:
    return _fmt(stats.get(key), "6.1f")


def _switch_lines(switched: dict | None, cfg: dict) -> list[str]:
    """_switch_lines: the switch phase — flips under load, then the rollback drills."""
    lines = [f"switch (cutover): wrk {cfg['switch_duration']:g}s x {cfg['connections']} "
             f"connections, a flip every {cfg['flip_interval']:g}s via POST /v1/flip "
             "(blue <-> green)"]
    flips = (switched or {}).get("flips")
    if not flips:
        lines.append("  not measured (see notes)")
    else:
        d, se, a = flips["drain"], flips["socket_errors"], flips["admin_ms"]
        lines += [
            f"  flips          {flips['flips']} applied"
            + (f", {flips['flips_refused']} refused" if flips["flips_refused"] else "")
            + f"; 200 after median {_fmt(a['median'], '.1f')} ms, max {_fmt(a['max'], '.1f')} ms;"
            f" next request on the new env {flips['next_request_on_new_env']}/{flips['flips']}",
            f"  requests       {flips['requests']} ({flips['rps']:.0f} req/s, p50 "
            f"{flips['p50_ms']:.2f} ms, p99 {flips['p99_ms']:.2f} ms)"
            + _foreign_text(flips),
            f"  errors         non-2xx/3xx {flips['non_2xx_3xx']}, socket connect {se['connect']}"
            f" read {se['read']} write {se['write']} timeout {se['timeout']}   (all must be 0)",
            f"  drains (sum)   drained {d['drained']}, forced_closed {d['forced_closed']}, "
            f"dropped {d['dropped']}, client_gone {d['client_gone']}; recorded "
            f"{d['recorded']}/{flips['flips']}, longest {_fmt(d['duration_ms']['max'], '.1f')} ms",
        ]
        if flips.get("workers", 1) > 1:
            lines.append(
                f"  workers        {flips['workers']}: acked by all {flips['acks_complete']}/"
                f"{flips['flips']}; fresh connections after each 200 on the new env "
                f"{flips['fresh_on_new_env']}/{flips['fresh_requests']}")
    rollback = (switched or {}).get("rollback")
    lines.append(f"rollback recovery: {cfg['rollback_repeats']} x (flip, drain, POST "
                 "/v1/rollback), a keep-alive probe sending GET / back to back")
    if not rollback:
        lines.append("  not measured (see notes)")
    else:
        r, rec, ack = rollback["recovery_ms"], rollback["recorded_recovery_ms"], rollback["ack_ms"]
        lines += [
            f"  {'ms':<36}{'min':>6}{'median':>8}{'max':>7}",
            f"  {'first answer from the previous env':<36}{_ms(r, 'min')}  {_ms(r, 'median')} "
            f"{_ms(r, 'max')}",
            f"  {'rollback answered (200)':<36}{_ms(ack, 'min')}  {_ms(ack, 'median')} "
            f"{_ms(ack, 'max')}",
            f"  {'recorded recovery_ms (to apply)':<36}{_ms(rec, 'min')}  {_ms(rec, 'median')} "
            f"{_ms(rec, 'max')}",
            f"  probe: {rollback['probe']['requests']} requests, {rollback['probe']['errors']} "
            "errors" + _foreign_text(rollback),
        ]
    return lines


def _share_cells(s: dict | None) -> str:
    if not s or not s.get("shares"):
        return "-"
    cells = " ".join(f"{v:5.1f}%" for v in s["shares"].values())
    return f"{cells}   max {s['max_deviation_pct']:.1f}% off even (of {s['total']})"


def _workers_lines(report: dict) -> list[str]:
    """_workers_lines (--workers N > 1): CPU per request vs one worker, the spread of
    connections and requests over the workers, the worker kill."""
    cfg, summaries = report["config"], report["targets"]
    phases = report.get("workers") or {}
    n = cfg["workers"]
    lines = [f"workers (cutover, workers: {n})"]
    for name, single, part in (("cutover", "cutover1", "the supervisor"),
                               ("nginx", "nginx1", "the master")):
        many, one = summaries.get(name, {}), summaries.get(single, {})
        ratio = _ratio(many.get("cpu_us_per_req"), one.get("cpu_us_per_req"))
        if ratio is None:
            continue
        lines += [
            f"  {name + ' CPU/req':<16}{many['cpu_us_per_req']:.1f} us with {n} workers (of which "
            f"{part} {many['root_cpu_us_per_req']:.1f}) vs {one['cpu_us_per_req']:.1f} us with 1 "
            f"({single}): {ratio:.2f}x; req/s {many['rps']:.0f} vs {one['rps']:.0f}",
            f"  {'':<16}per 100 requests, went idle {_fmt(many.get('idle_per_100_req'), '.1f')} "
            f"vs {_fmt(one.get('idle_per_100_req'), '.1f')}, preempted "
            f"{_fmt(many.get('preempted_per_100_req'), '.1f')} vs "
            f"{_fmt(one.get('preempted_per_100_req'), '.1f')}"]
    spread = phases.get("spread")
    if not spread:
        lines.append("  spread         not measured (see notes)")
    else:
        ka, fr = spread["keepalive"], spread["fresh"]
        lines += [
            f"  spread         each worker's share, in slot order (even = {100 / n:.1f}%)",
            f"    keep-alive connections (mid-run)  {_share_cells(ka.get('connections_by_worker'))}",
            f"    their requests                    {_share_cells(ka['requests_by_worker'])}",
            f"    fresh connections (1 request each) {_share_cells(fr['requests_by_worker'])}",
            f"    wrk errors: keep-alive {ka['errors']}, fresh {fr['errors']} (must be 0); "
            f"{ka['rps']:.0f} / {fr['rps']:.0f} req/s",
        ]
    kill = phases.get("kill")
    if not kill:
        lines.append("  worker kill    not measured (see notes)")
    else:
        se, down, up = kill["socket_errors"], kill["flip_while_down"], kill["flip_after_restart"]
        lines += [
            f"  worker kill    SIGKILL of worker {kill['killed_pid']} (slot {kill['slot']}) under "
            f"wrk -c{cfg['connections']}: it held {kill['killed_connections']} connections, "
            f"{kill['killed_inflight']} requests in flight",
            f"    failed       {kill['errors']} of {kill['requests']} (socket read {se['read']} "
            f"write {se['write']} connect {se['connect']} timeout {se['timeout']}, non-2xx/3xx "
            f"{kill['non_2xx_3xx']}); beyond the killed worker's connections "
            f"{kill_failures_beyond(kill)}",
            f"    restart      as {kill['new_pid']} after {kill['restart_ms']:.0f} ms (restarts "
            f"{kill['restarts']}), generation {kill['new_generation']} of "
            f"{kill['generation_then']}; killed process gone: {kill['killed_gone']}; fresh "
            f"connections then on the live env {kill['fresh_on_live']}/"
            f"{kill['fresh_after_restart']}",
            f"    flips        while down: {down['status']} in {down['ms']:.1f} ms, acked "
            f"{len(down['acked'])}, pending {len(down['pending'])}; after the restart: "
            f"{up['status']} in {up['ms']:.1f} ms, acked {len(up['acked'])}/{kill['workers']}",
        ]
    return lines


def render(report: dict) -> str:
    """render returns the whole text report: header, figures, ratios, the switch phase,
    goals, notes. With --switch-only: header, the switch phase, goals, notes."""
    cfg, order = report["config"], report["order"]
    pin = report["pinning"]
    cpus = lambda key: ",".join(map(str, pin[key]))  # noqa: E731
    pinning = (f"proxy on CPU {cpus('proxy_cpus')}, wrk + backend on CPU {cpus('load_cpus')}"
               + (" (shared: the load generator shares the cores)" if pin["shared"] else "")
               if pin["enabled"] else "NO CPU pinning (see warning)")
    switch_part = (["", *_switch_lines(report.get("switch"), cfg)]
                   if cfg.get("switch") else [])
    workers_part = (["", *_workers_lines(report)]
                    if cfg.get("workers", 1) > 1 and not cfg.get("switch_only") else [])
    if cfg.get("switch_only"):
        lines = [
            f"cutover bench: switch phase only; {pinning}",
            "  " + "; ".join(report["versions"].values()),
            *switch_part,
            "",
            *_goals_lines(report["goals"]),
        ]
        return "\n".join(lines + _notes_lines(report))
    n = cfg.get("workers", 1)
    lines = [
        f"cutover bench: {cfg['rounds']} round(s) x {cfg['duration']:g}s, "
        f"{cfg['connections']} connections, wrk -t1, warm-up {cfg['warmup']:g}s; {pinning}",
        *([f"  --workers {n}: cutover `workers: {n}`, nginx `worker_processes {n}` (reuseport), "
           f"HAProxy `nbthread {n}`; nginx1, cutover1 = one worker, same CPUs"] if n > 1
          else []),
        "  " + "; ".join(report["versions"].values()),
        "  medians over rounds; errors = total over rounds; spread = (max-min)/median req/s;",
        "  CPU = the proxy's process tree (direct: the backend's), per request and in % of a core;",
        "  load = how busy the load CPU(s) (wrk + backend) were: near 100% the load side limits;",
        f"  RSS 1k = holding {cfg['idle_connections']} idle keep-alive connections;",
        f"  foreign = CPU taken by other processes on the pinned CPUs (> {cfg['foreign_limit']:g}%: "
        f"disturbed, measured again up to {cfg['retry_disturbed']} times)",
        "",
        *_figures_table(order, report["targets"], report["failures"]),
        "",
        *_ratios_table(order, report["ratios"]),
        *workers_part,
        *switch_part,
        "",
        *_goals_lines(report["goals"]),
    ]
    return "\n".join(lines + _notes_lines(report))


def _notes_lines(report: dict) -> list[str]:
    notes = report["notes"] + [f"{name}: {msg}" for name, msg in report["failures"].items()]
    if not notes:
        return []
    return ["", "notes"] + ["  " + n.replace("\n", "\n    ") for n in notes]
