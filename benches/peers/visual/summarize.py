#!/usr/bin/env python3
"""Prints the visual-search benchmark's summary from the files benches/peers/visual/run.sh
writes into OUT: legs/<kind>/NNN-<side>.json (`ferrite bench --json`), recall.json,
build.json and embed.json.

    python summarize.py OUT

Per kind of call and side: the median over the alternated legs of each leg's p50 and p99, the
server CPU per call (all legs' CPU over all their calls), the steal range the legs saw, and
Ferrite / peer ratios; for the embedding-only legs, Ferrite's raw in-process search of the
same index (median of its legs' p99) and the server's p99 against it.
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"(\d+)-(ferrite|peer)\.json$")
KINDS = {
    "image": "image -> top-10 (VisualSearch, image bytes)",
    "embedding": "embedding -> top-10 (VisualSearch, embedding)",
    "embedding-filtered": "embedding -> top-10, 1 % category filter",
}


def ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r >= 1 else f"{r:.2f}x (1/{1 / r:.1f})"


def side_stats(legs: list[dict]) -> dict:
    runs = [leg["run"] for leg in legs]
    cpus = [r.get("server_cpu") for r in runs]
    calls = sum(r["ok"] + r["errors"] for r in runs)
    steal = [leg["host"]["cpu"]["steal_pct"] for leg in legs if leg["host"].get("cpu")]
    busy = [leg["host"]["cpu"]["busy_pct"] for leg in legs if leg["host"].get("cpu")]
    raw = [r for leg in legs for r in leg.get("raw", [])]
    return {
        "legs": len(runs),
        "calls": calls,
        "errors": sum(r["errors"] for r in runs),
        "p50": statistics.median(r["latency_us"]["p50"] for r in runs),
        "p99": statistics.median(r["latency_us"]["p99"] for r in runs),
        "cpu": None if any(c is None for c in cpus) else 1e6 * sum(c["cpu_s"] for c in cpus) / max(calls, 1),
        "steal": (min(steal), max(steal)) if steal else None,
        "busy": (min(busy), max(busy)) if busy else None,
        "raw_p50": statistics.median(r["latency_us"]["p50"] for r in raw) if raw else None,
        "raw_p99": statistics.median(r["latency_us"]["p99"] for r in raw) if raw else None,
    }


def main() -> int:
    out = Path(sys.argv[1])
    legs = defaultdict(lambda: defaultdict(list))
    for kind_dir in sorted((out / "legs").iterdir()) if (out / "legs").is_dir() else []:
        for f in sorted(kind_dir.glob("*.json")):
            m = NAME.search(f.name)
            if m:
                legs[kind_dir.name][m.group(2)].append(json.loads(f.read_text()))
    summary = {"kinds": {}}
    print("| call | side | legs | calls | errors | p50 | p99 | server CPU per call | steal | machine busy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        if kind not in legs:
            continue
        stats = {side: side_stats(legs[kind][side]) for side in ("ferrite", "peer") if legs[kind][side]}
        summary["kinds"][kind] = stats
        for side, s in stats.items():
            steal = f"{s['steal'][0]:.1f}-{s['steal'][1]:.1f} %" if s["steal"] else "-"
            busy = f"{s['busy'][0]:.0f}-{s['busy'][1]:.0f} %" if s["busy"] else "-"
            cpu = f"{s['cpu']:,.0f} µs" if s["cpu"] is not None else "-"
            print(f"| {KINDS[kind]} | {side} | {s['legs']} | {s['calls']} | {s['errors']} | {ms(s['p50'])} "
                  f"| {ms(s['p99'])} | {cpu} | {steal} | {busy} |")
    print()
    print("| call | Ferrite / peer p50 | Ferrite / peer p99 | Ferrite / peer CPU per call | Ferrite p99 / raw FAISS p99 |")
    print("|---|---|---|---|---|")
    for kind, stats in summary["kinds"].items():
        f, p = stats.get("ferrite"), stats.get("peer")
        if not f:
            continue
        raw = ""
        if f["raw_p99"]:
            raw = f"{ratio(f['p99'], f['raw_p99'])} (raw p50 {ms(f['raw_p50'])}, p99 {ms(f['raw_p99'])})"
        print(f"| {KINDS[kind]} | {ratio(f['p50'], p and p['p50'])} | {ratio(f['p99'], p and p['p99'])} "
              f"| {ratio(f['cpu'], p and p['cpu'])} | {raw or '-'} |")
    recall = out / "recall.json"
    if recall.exists():
        r = json.loads(recall.read_text())
        summary["recall"] = r
        print()
        print(f"recall@{r['k']} over {r['queries']} queries, {r['items']:,} items; filter: category "
              f"{r['category']} ({r['category_items']} items, {100 * r['category_items'] / r['items']:.2f} %)")
        print("| side | embedding | embedding, filtered | image | image, filtered |")
        print("|---|---|---|---|---|")
        for side, s in r["servers"].items():
            print(f"| {side} | {s['embedding_unfiltered']:.3f} | {s['embedding_filtered']:.3f} "
                  f"| {s['image_unfiltered']:.3f} | {s['image_filtered']:.3f} |")
    for name in ("build.json", "embed.json"):
        path = out / name
        if path.exists():
            data = json.loads(path.read_text())
            summary[name.removesuffix(".json")] = data
            print()
            print(f"{name}: " + json.dumps(data))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
