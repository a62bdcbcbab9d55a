"""Reads the `ferrite bench --json` files of scripts/bench_pipelines.sh and prints the summary.

    python summarize.py check LEG.json [--p99-us 50000]   # exit 0 if the leg was sustained
    python summarize.py table OUT/legs [--p99-us 50000] [--cpu-goal 40] [--no-rate-goals]
                                                          # the summary table and the ratios

A leg file is named NNN-SIDE-RATE.json (SIDE: ferrite or peer; floor and read-RPC: Ferrite's
health check and the online reads of the call, at the same rate, on Ferrite's processes). A
leg is *sustained* when no call failed, none was skipped (the open loop never hit its
in-flight cap) and its p99 is within the limit; `check` says so for one leg, which is how the script's rate ladders stop.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"(\d+)-(ferrite|peer|floor|read-[a-z0-9-]+)-(\d+)\.json$")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def sustained(run: dict, p99_us: float) -> bool:
    return run["errors"] == 0 and run["skipped"] == 0 and run["latency_us"]["p99"] <= p99_us


class Pooled:
    """Legs of one side at one rate, pooled: calls and CPU added, percentiles of the worst leg
    (the JSON holds percentiles, not histograms, so pooling can only bound them)."""

    def __init__(self):
        self.legs = []

    def add(self, report: dict):
        self.legs.append(report)

    def runs(self):
        return [leg["run"] for leg in self.legs]

    def total(self, key):
        return sum(r[key] for r in self.runs())

    def worst(self, q):
        return max(r["latency_us"][q] for r in self.runs())

    def median(self, q):
        xs = sorted(r["latency_us"][q] for r in self.runs())
        return xs[len(xs) // 2]

    def cpu_us_per_call(self):
        cpus = [r.get("server_cpu") for r in self.runs()]
        if any(c is None for c in cpus):
            return None
        calls = sum(r["ok"] + r["errors"] for r in self.runs())
        return 1e6 * sum(c["cpu_s"] for c in cpus) / max(calls, 1)

    def steal(self):
        xs = [leg["host"]["cpu"]["steal_pct"] for leg in self.legs if leg["host"].get("cpu")]
        return (min(xs), max(xs)) if xs else None

    def sustained(self, p99_us):
        return all(sustained(r, p99_us) for r in self.runs())


def fmt_ms(us):
    return f"{us / 1000:.2f}"


def table(legs_dir: Path, p99_us: float, cpu_goal: float = 40, fraud_goals: bool = True) -> None:
    groups: dict[tuple[str, int], Pooled] = defaultdict(Pooled)
    for path in sorted(legs_dir.glob("*.json")):
        m = NAME.search(path.name)
        if m:
            groups[(m.group(2), int(m.group(3)))].add(load(path))
    if not groups:
        sys.exit(f"no leg files in {legs_dir}")
    print("| side | rate/s | legs | sent | ok | errors | fallbacks | skipped | p50 ms | p99 ms | p99.9 ms | server CPU µs/call | steal % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (side, rate), g in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cpu = g.cpu_us_per_call()
        steal = g.steal()
        steal_text = f"{steal[0]:.1f}-{steal[1]:.1f}" if steal else "n/a"
        # Median of the legs' p50, worst leg's p99 and p99.9.
        print(
            f"| {side} | {rate} | {len(g.legs)} | {g.total('sent')} | {g.total('ok')} | {g.total('errors')} | "
            f"{g.total('fallbacks')} | {g.total('skipped')} | {fmt_ms(g.median('p50'))} | {fmt_ms(g.worst('p99'))} | "
            f"{fmt_ms(g.worst('p999'))} | {'n/a' if cpu is None else f'{cpu:.1f}'} | {steal_text} |"
        )
    # Processes behind the CPU time, from the last leg of each side.
    for side in ("ferrite", "peer"):
        last = [g.legs[-1] for (s, _), g in groups.items() if s == side]
        if last and last[-1]["run"].get("server_cpu"):
            names = ", ".join(f"{p['name']}[{p['pid']}]" for p in last[-1]["run"]["server_cpu"]["processes"])
            print(f"\n{side} server-side processes counted: {names}")

    print()
    shared = sorted(r for (s, r) in groups if s == "peer" and ("ferrite", r) in groups)
    cpu_ratios = []
    for rate in shared:
        f, p = groups[("ferrite", rate)].cpu_us_per_call(), groups[("peer", rate)].cpu_us_per_call()
        if f and p:
            cpu_ratios.append((rate, f, p))
            print(f"CPU per call at {rate}/s: Ferrite {f:.1f} µs, peer {p:.1f} µs: 1/{p / f:.1f} (goal <= 1/{cpu_goal:g})")
    for rate in shared:
        floor, p = groups.get(("floor", rate)), groups[("peer", rate)].cpu_us_per_call()
        # What any server pays at this rate before it runs a model: the empty call, plus each
        # online read's cost above it (Redis's work included).
        base = floor.cpu_us_per_call() if floor else None
        if base is None or not p:
            continue
        reads = {s[len("read-"):]: g.cpu_us_per_call() - base for (s, r), g in groups.items()
                 if r == rate and s.startswith("read-") and g.cpu_us_per_call() is not None}
        total = base + sum(reads.values())
        parts = ", ".join(f"{name} +{cost:.1f}" for name, cost in sorted(reads.items()))
        print(f"floor + online reads at {rate}/s: {total:.1f} µs (health check {base:.1f}{', ' + parts if parts else ''}): "
              f"the peer's call is {p / total:.1f}x that, so no server on this host goes below 1/{p / total:.1f} of it at this rate")
    for rate in shared:
        f, p = groups[("ferrite", rate)].worst("p99"), groups[("peer", rate)].worst("p99")
        print(f"p99 at {rate}/s: Ferrite {fmt_ms(f)} ms, peer {fmt_ms(p)} ms: 1/{p / max(f, 1):.1f}")
    # A rate is sustained when no call failed or was skipped and p99 stayed within the limit
    # (beyond it the peer's queue grows for as long as the leg lasts).
    held = [r for r in shared if groups[("peer", r)].sustained(p99_us)]
    if not fraud_goals:
        pass
    elif held:
        top = max(held)
        f, p = groups[("ferrite", top)].worst("p99"), groups[("peer", top)].worst("p99")
        print(
            f"p99 at {top}/s, the highest rate the peer sustained (no errors, p99 <= {p99_us / 1000:.0f} ms): "
            f"Ferrite {fmt_ms(f)} ms, peer {fmt_ms(p)} ms: 1/{p / max(f, 1):.1f} (goal <= 1/10)"
        )
    else:
        print(f"the peer sustained none of the rates both sides ran (no errors, p99 <= {p99_us / 1000:.0f} ms)")

    def max_rate(side):
        rates = sorted(r for (s, r) in groups if s == side)
        good = [r for r in rates if groups[(side, r)].sustained(p99_us)]
        return (max(good) if good else None), (max(rates) in good if rates else False)

    (fmax, f_open), (pmax, p_open) = max_rate("ferrite"), max_rate("peer")
    if fmax and pmax and fraud_goals:
        more = ">= " if f_open else ""
        print(
            f"max rate with p99 <= {p99_us / 1000:.0f} ms and no errors: Ferrite {more}{fmax}/s"
            f"{' (the highest rate tried)' if f_open else ''}, peer {'>= ' if p_open else ''}{pmax}/s: "
            f"{more}{fmax / pmax:.1f}x (goal >= 40x)"
        )
    steal = [leg["host"]["cpu"]["steal_pct"] for g in groups.values() for leg in g.legs if leg["host"].get("cpu")]
    if steal:
        print(f"host steal over the legs: {min(steal):.1f}-{max(steal):.1f} % of CPU time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["check", "table"])
    ap.add_argument("path", type=Path)
    ap.add_argument("--p99-us", type=float, default=50_000)
    ap.add_argument("--cpu-goal", type=float, default=40, help="the CPU-per-call goal: Ferrite <= 1/N of the peer")
    ap.add_argument("--no-rate-goals", action="store_true",
                    help="leave out the fraud issue's p99 (1/10) and max-rate (40x) goal lines")
    args = ap.parse_args()
    if args.mode == "check":
        run = load(args.path)["run"]
        ok = sustained(run, args.p99_us)
        print(
            f"{args.path.name}: {'sustained' if ok else 'not sustained'} (errors {run['errors']}, "
            f"skipped {run['skipped']}, p99 {fmt_ms(run['latency_us']['p99'])} ms)",
            file=sys.stderr,
        )
        sys.exit(0 if ok else 1)
    table(args.path, args.p99_us, args.cpu_goal, not args.no_rate_goals)


if __name__ == "__main__":
    main()
