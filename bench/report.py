"""bench/run.sh's results.jsonl into a markdown matrix, relay/Node ratios and the issue's targets.

    python3 bench/report.py results.jsonl [machine.txt]
"""

import json
import sys

MIB = 1024.0


def get(d, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def row_of(r):
    """The figures of one cell, None where loadgen had none."""
    rel, load = r.get("relay") or {}, r.get("load") or {}
    lat = load.get("latency_ms") or {}
    sched = load.get("latency_from_schedule_ms") or {}
    cpu = rel.get("cpu_load_s")
    delivered = load.get("delivered")
    wall = (load.get("post_secs") or 0) + (load.get("drain_secs") or 0)
    own = get(r, "loadgen_cpu_s", "load")
    return {
        "idle_mib": rel["rss_idle_kib"] / MIB if rel.get("rss_idle_kib") else None,
        "peak_mib": rel["hwm_kib"] / MIB if rel.get("hwm_kib") else None,
        "p50": lat.get("p50"),
        "p99": lat.get("p99"),
        "max": lat.get("max"),
        "s50": sched.get("p50"),
        "s99": sched.get("p99"),
        "smax": sched.get("max"),
        "delivered": delivered,
        "expected": load.get("expected"),
        "lost": load.get("lost"),
        "dup": load.get("duplicates"),
        "cpu_s": cpu,
        "us_per_delivery": 1e6 * cpu / delivered if cpu is not None and delivered else None,
        "loadgen_cores": own / wall if own is not None and wall else None,
        "server_cores": cpu / wall if cpu is not None and wall else None,
        "rate": load.get("rate_achieved"),
        "accepted": load.get("accepted"),
        "planned": load.get("events_planned"),
        "busy": load.get("busy_503"),
        "post_errors": load.get("post_errors"),
        "connected": get(r, "connect", "connected"),
        "closed": get(r, "closed_by_relay", "readers"),
        "connect_s": get(r, "connect", "secs"),
        "loadavg": get(r, "loadavg_1m", "end"),
    }


def fmt(x, digits=1):
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def sched_text(c):
    if c["s99"] is None:
        return "–"
    return f"{fmt(c['s50'])} / {fmt(c['s99'])} / {fmt(c['smax'], 0)}"


def p99(c):
    """p99 from the schedule when loadgen measured it: it counts a webhook answered slowly."""
    return c["s99"] if c.get("s99") is not None else c["p99"]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    cells = {}
    for r in rows:
        cells[(r["cell"], r["server"])] = row_of(r) if "error" not in r else None
    order = list(dict.fromkeys(r["cell"] for r in rows))
    out = []
    if len(sys.argv) > 2:
        out.append("```text\n" + open(sys.argv[2]).read().strip() + "\n```\n")

    out.append(
        "| cell | server | kiosks up | RSS idle MiB | RSS peak MiB | p50 ms | p99 ms | max ms"
        " | p50 / p99 / max ms from schedule | delivered / expected | lost¹ | dup | server CPU s | CPU µs / delivery"
        " | server cores | loadgen cores | posted (rate/s) | kiosks cut off | load avg |"
    )
    out.append("|" + "---|" * 19)
    for name in order:
        for server in ("relay", "node"):
            c = cells.get((name, server))
            if (name, server) not in cells:
                continue
            if c is None:
                out.append(f"| {name} | {server} | loadgen failed |" + " |" * 16)
                continue
            sat = " ⚠" if c["loadgen_cores"] and c["loadgen_cores"] > 0.9 else ""
            posted = "–"
            if c["planned"]:
                posted = f"{c['accepted']}/{c['planned']} ({fmt(c['rate'])})"
                if c["busy"] or c["post_errors"]:
                    posted += f", {c['busy']}×503, {c['post_errors']} err"
            dexp = "–" if c["expected"] is None else f"{fmt(c['delivered'])} / {fmt(c['expected'])}"
            out.append(
                f"| {name} | {server} | {fmt(c['connected'])} | {fmt(c['idle_mib'])} | {fmt(c['peak_mib'])}"
                f" | {fmt(c['p50'])} | {fmt(c['p99'])} | {fmt(c['max'], 0)}"
                f" | {sched_text(c)} | {dexp}"
                f" | {fmt(c['lost'])} | {fmt(c['dup'])} | {fmt(c['cpu_s'], 2)} | {fmt(c['us_per_delivery'])}"
                f" | {fmt(c['server_cores'], 2)} | {fmt(c['loadgen_cores'], 2)}{sat} | {posted} | {fmt(c['closed'])} | {fmt(c['loadavg'], 2)} |"
            )
    out.append("")
    out.append("¹ expected − delivered when loadgen stopped waiting (drain: 15 s steady, 20 s burst,"
               " or 2 s without a delivery): events still queued count too. *kiosks cut off* and"
               " the relay's overflow counter in results.jsonl say whether anything was dropped.")
    out.append("")
    out.append("⚠: the loadgen used more than 0.9 of a core over the load (it is multi-threaded and"
               " shares the 2 cores with the server; see BENCHMARKS.md). Cores: CPU seconds over the"
               " load's wall time (posting + drain). Load avg: the machine's 1-minute load average"
               " at the end of the cell (2 cores; other work on the machine shows here).")
    out.append("")

    out.append("Relay ÷ Node (below 1: the relay is better):")
    out.append("")
    out.append("| cell | RSS idle | RSS peak | p50 | p99 | max | p99 from schedule | CPU µs / delivery |")
    out.append("|---|---|---|---|---|---|---|---|")
    for name in order:
        a, b = cells.get((name, "relay")), cells.get((name, "node"))
        if not a or not b:
            continue
        rs = [ratio(a[k], b[k]) for k in ("idle_mib", "peak_mib", "p50", "p99", "max", "s99", "us_per_delivery")]
        out.append(f"| {name} | " + " | ".join(fmt(x, 2) for x in rs) + " |")
    out.append("")

    def c(name, server):
        return cells.get((name, server)) or {}

    targets = []
    r, n = c("steady-10000", "relay"), c("steady-10000", "node")
    if r and n:
        x = ratio(r["idle_mib"], n["idle_mib"])
        ok = x is not None and x <= 0.2 and r["idle_mib"] < 48
        targets.append(("RSS with 10,000 idle kiosks ≤ 1/5 of Node's and < 48 MiB",
                        f"{fmt(r['idle_mib'])} vs {fmt(n['idle_mib'])} MiB = {fmt(x, 2)}", ok))
        x = ratio(p99(r), p99(n))
        ok = x is not None and x <= 1 / 3
        targets.append(("p99 at 10,000 kiosks, 1 ev/s ≤ 1/3 of Node's",
                        f"{fmt(p99(r))} vs {fmt(p99(n))} ms = {fmt(x, 2)}"
                        f" (from sending: {fmt(r['p99'])} vs {fmt(n['p99'])})", ok))
    r, n = c("burst-1000", "relay"), c("burst-1000", "node")
    if r and n:
        x = ratio(p99(r), p99(n))
        ok = r["lost"] == 0 and x is not None and x <= 0.2
        targets.append(("100/s burst at 1,000 kiosks: nothing lost, p99 ≤ 1/5 of Node's",
                        f"lost {fmt(r['lost'])} (Node {fmt(n['lost'])}); p99 {fmt(p99(r))} vs"
                        f" {fmt(p99(n))} ms = {fmt(x, 2)} (from sending: {fmt(r['p99'])} vs"
                        f" {fmt(n['p99'])}; Node took {fmt(n['rate'])} posts/s)", ok))
    per_cell = []
    for name in order:
        a, b = c(name, "relay"), c(name, "node")
        x = ratio(a.get("us_per_delivery"), b.get("us_per_delivery"))
        if x is not None:
            per_cell.append((name, x))
    if per_cell:
        met = [name for name, x in per_cell if x <= 0.5]
        text = ", ".join(f"{name} {x:.2f}" for name, x in per_cell)
        targets.append(("CPU s per delivered event ≤ 1/2 of Node's (every cell)",
                        text, len(met) == len(per_cell)))
    r = c("idle", "relay")
    if r:
        ok = r["idle_mib"] is not None and r["idle_mib"] < 8
        extra = f" (Node {fmt(c('idle', 'node').get('idle_mib'))} MiB)" if c("idle", "node") else ""
        targets.append(("relay idle RSS < 8 MiB", f"{fmt(r['idle_mib'])} MiB{extra}", ok))
    out.append("Latency targets use p99 from the schedule (the time loadgen meant to post the"
               " change), which also counts a webhook answered slowly.")
    out.append("")
    out.append("| target | measured (relay vs Node = ratio) | |")
    out.append("|---|---|---|")
    for what, measured, ok in targets:
        out.append(f"| {what} | {measured} | {'met' if ok else '**not met**'} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
