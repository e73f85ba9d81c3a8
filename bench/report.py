"""bench/run.sh's results.jsonl into a markdown matrix, relay/Node ratios, the kiosks that fell
behind (lag cells) and the issues' targets.

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
    lag = r.get("lag") or {}
    lagging = lag.get("kiosks")

    def grew(name):
        a, b = get(rel, "metrics_warm", name), get(rel, "metrics", name)
        return b - a if a is not None and b is not None else None

    shared = [x for x in (grew("replay_bytes"), grew("mirror_bytes")) if x is not None]
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
        "warm_mib": rel["rss_warm_kib"] / MIB if rel.get("rss_warm_kib") else None,
        "load_peak_mib": rel["rss_peak_load_kib"] / MIB if rel.get("rss_peak_load_kib") else None,
        "after_mib": rel["rss_after_kib"] / MIB if rel.get("rss_after_kib") else None,
        "lagging": lagging,
        "kept_kib": lag.get("kept_per_kiosk_kib"),
        "lag_peak_kib": lag.get("peak_per_kiosk_kib"),
        # What the relay's replay ring and mirror grew by after the warm sample (its own
        # gauges; Node has neither): shared by every kiosk, not kept per lagging kiosk.
        "shared_kib": sum(shared) / 1024 / lagging if shared and lagging else None,
        "tcp_kib": lag.get("tcp_buffers_per_kiosk_kib"),
        "caught_up_s": lag.get("caught_up_s"),
        "held_kib": (lag["rss_lagging_kib"] - rel["rss_warm_kib"]) / lagging
        if lag.get("rss_lagging_kib") and rel.get("rss_warm_kib") and lagging else None,
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


SATURATED = 0.9


def goals(c, machine_text):
    """Issue 18's goals ("ahead of Node at every size") as table lines; c(cell, server) gives a
    cell's figures ({} when missing)."""
    rows = []

    def bound(*cs):
        return any((x.get("loadgen_cores") or 0) > SATURATED for x in cs if x)

    def add(what, relay, node, x, ok, *cs):
        mark = "met" if ok else "**not met**"
        if ok is None:
            mark = "–"
        if bound(*cs):
            mark += " ⚠ client-bound"
        rows.append(f"| {what} | {relay} | {node} | {fmt(x, 2)} | {mark} |")

    base_r, base_n = c("idle", "relay").get("idle_mib"), c("idle", "node").get("idle_mib")
    sizes = sorted({int(name.split("-")[1]) for (name, _s) in CELLS if "-" in name})

    def per_idle_kiosk(n, server, base):
        xs = [c(f"{kind}-{n}", server).get("idle_mib") for kind in ("steady", "burst")]
        xs = [x for x in xs if x is not None]
        if not xs or base is None:
            return None
        return (sum(xs) / len(xs) - base) * 1024 / n

    for n in (5000, 10000):
        r, nd = per_idle_kiosk(n, "relay", base_r), per_idle_kiosk(n, "node", base_n)
        if r is None and nd is None:
            continue
        x = ratio(r, nd)
        ok = None if x is None else (x <= 0.5 and r <= 8)
        add(f"RSS per idle kiosk, {n:,} kiosks: ≤ 0.5 of Node's and ≤ 8 KiB", f"{fmt(r)} KiB",
            f"{fmt(nd)} KiB", x, ok)
    for n in (5000, 10000):
        r, nd = c(f"burst-{n}", "relay"), c(f"burst-{n}", "node")
        if not r and not nd:
            continue
        x = ratio(r.get("peak_mib"), nd.get("peak_mib"))
        posted = f"; Node took {fmt(nd.get('accepted'))}/{fmt(nd.get('planned'))} posts" if nd.get("planned") else ""
        add(f"peak RSS in the 100/s burst, {n:,} kiosks: ≤ 1.0 of Node's", f"{fmt(r.get('peak_mib'))} MiB",
            f"{fmt(nd.get('peak_mib'))} MiB{posted}", x, None if x is None else x <= 1.0, r, nd)
    for n in sizes:
        r, nd = c(f"lag-{n}", "relay"), c(f"lag-{n}", "node")
        if not r and not nd:
            continue
        kept = r.get("kept_kib")
        net = kept - (r.get("shared_kib") or 0) if kept is not None else None
        add(f"memory kept per kiosk that fell behind, {n:,} kiosks ({fmt(r.get('lagging') or nd.get('lagging'))}"
            " lagging): ≤ 16 KiB",
            f"{fmt(net)} KiB ({fmt(kept)} less {fmt(r.get('shared_kib'))} of replay ring and mirror)",
            f"{fmt(nd.get('kept_kib'))} KiB", ratio(net, nd.get("kept_kib")),
            None if net is None else net <= 16, r, nd)
    for n in sizes:
        r, nd = c(f"steady-{n}", "relay"), c(f"steady-{n}", "node")
        if not r or not nd:
            continue
        x = ratio(r.get("us_per_delivery"), nd.get("us_per_delivery"))
        add(f"CPU per delivery, steady-{n}: ≤ 0.5 of Node's", f"{fmt(r.get('us_per_delivery'))} µs",
            f"{fmt(nd.get('us_per_delivery'))} µs", x, None if x is None else x <= 0.5, r, nd)
    for n in (5000, 10000):
        r, nd = c(f"steady-{n}", "relay"), c(f"steady-{n}", "node")
        if not r or not nd:
            continue
        x = ratio(p99(r), p99(nd))
        add(f"p99 at {n:,} kiosks, 1 event/s: ≤ 0.5 of Node's", f"{fmt(p99(r))} ms", f"{fmt(p99(nd))} ms",
            x, None if x is None else x <= 0.5, r, nd)
    size = None
    for line in machine_text.splitlines():
        if line.startswith("relay binary:"):
            try:
                size = int(line.split(":")[1].split()[0]) / MIB / MIB
            except (IndexError, ValueError):
                pass
    if size is not None:
        add("binary size < 6 MiB", f"{fmt(size, 2)} MiB", "–", None, size < 6)

    if not rows:
        return []
    return [
        "Issue 18's goals (ahead of Node at every size). RSS per idle kiosk: (RSS idle with N"
        " kiosks, mean of the steady and burst cells − the idle cell's RSS) ÷ N. p99 from the"
        " schedule. ⚠ client-bound: the loadgen used more than 0.9 of a core in a cell behind"
        " the figure, so the client side may bound it.",
        "",
        "| goal | relay | Node | relay ÷ Node | |",
        "|---|---|---|---|---|",
        *rows,
    ]


CELLS = {}


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    cells = CELLS
    for r in rows:
        cells[(r["cell"], r["server"])] = row_of(r) if "error" not in r else None
    order = list(dict.fromkeys(r["cell"] for r in rows))
    out = []
    machine_text = open(sys.argv[2]).read() if len(sys.argv) > 2 else ""
    if machine_text:
        out.append("```text\n" + machine_text.strip() + "\n```\n")

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
        if name.startswith("lag-"):
            continue
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
    lag_cells = [name for name in order if name.startswith("lag-")]
    if lag_cells:
        out.append("Kiosks that fell behind (lag cells): a warm-up reached every kiosk (warm RSS),"
                   " then the lagging kiosks read nothing while the events were posted, then read"
                   " again and caught up; *held at the lag's end*: RSS when the last event was"
                   " posted, before they read again; *peak*: the highest RSS from the first event"
                   " to the end of the catch-up; *after* is 3 s after every kiosk had every"
                   " event. Per lagging kiosk: less the warm RSS, ÷ lagging kiosks.")
        out.append("")
        out.append("| cell | server | kiosks (lagging) | RSS idle MiB | RSS warm MiB | RSS peak, lag and catch-up MiB"
                   " | RSS after catch-up MiB | kept KiB / lagging kiosk | of it replay ring + mirror²"
                   " | held KiB / lagging kiosk at the lag's end | peak KiB / lagging kiosk | kernel TCP buffers KiB / lagging kiosk³"
                   " | caught up s⁴ | delivered / expected | kiosks cut off | loadgen cores | load avg |")
        out.append("|" + "---|" * 17)
        for name in lag_cells:
            for server in ("relay", "node"):
                if (name, server) not in cells:
                    continue
                row = cells[(name, server)]
                if row is None:
                    out.append(f"| {name} | {server} | loadgen failed |" + " |" * 14)
                    continue
                sat = " ⚠" if row["loadgen_cores"] and row["loadgen_cores"] > 0.9 else ""
                dexp = "–" if row["expected"] is None else f"{fmt(row['delivered'])} / {fmt(row['expected'])}"
                out.append(
                    f"| {name} | {server} | {fmt(row['connected'])} ({fmt(row['lagging'])}) | {fmt(row['idle_mib'])}"
                    f" | {fmt(row['warm_mib'])} | {fmt(row['load_peak_mib'])} | {fmt(row['after_mib'])}"
                    f" | {fmt(row['kept_kib'])} | {fmt(row['shared_kib'])} | {fmt(row['held_kib'])} | {fmt(row['lag_peak_kib'])}"
                    f" | {fmt(row['tcp_kib'])} | {fmt(row['caught_up_s'], 2)} | {dexp}"
                    f" | {fmt(row['closed'])} | {fmt(row['loadgen_cores'], 2)}{sat} | {fmt(row['loadavg'], 2)} |"
                )
        out.append("")
        out.append("² what the relay's replay ring and mirror grew by after the warm sample (its"
                   " `replay_bytes` and `mirror_bytes` gauges), per lagging kiosk: shared by all"
                   " kiosks, so the goal below counts kept − this. RSS as the kernel reports it:"
                   " memory the allocator freed but kept (glibc does not give every freed page"
                   " back) counts as kept.")
        out.append("")
        out.append("³ the machine's TCP socket buffers (`/proc/net/sockstat`) just before the"
                   " lagging kiosks read again, less at the warm sample, per lagging kiosk: both"
                   " ends of each loopback connection, and any other TCP traffic on the machine."
                   " No RSS shows it: what a server leaves to the kernel to hold for a slow"
                   " kiosk is here (the relay bounds its send buffer, SO_SNDBUF 64 KiB on"
                   " loopback; Node leaves it to the kernel's autotuning).")
        out.append("")
        out.append("⁴ from the end of the lag until every kiosk had every event (– : not within"
                   " the drain's 30 s, and then *after* was sampled before every kiosk caught up).")
        out.append("")

    out.extend(goals(c, machine_text))
    out.append("")
    out.append("Latency targets use p99 from the schedule (the time loadgen meant to post the"
               " change), which also counts a webhook answered slowly.")
    out.append("")
    out.append("Issue 6's targets:")
    out.append("")
    out.append("| target | measured (relay vs Node = ratio) | |")
    out.append("|---|---|---|")
    for what, measured, ok in targets:
        out.append(f"| {what} | {measured} | {'met' if ok else '**not met**'} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
