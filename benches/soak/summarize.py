"""Summarizes a soak run of scripts/soak.sh (and draws its chart).

    python summarize.py OUT --window-s 30 --warmup-s 60 [--chart OUT/soak.png]

Reads OUT/rates.txt, OUT/max-RPC.json, OUT/open-max.txt (when the run probed its open-loop
maxima: "max/s" is then that), OUT/windows/W-RPC.json (ferrite bench --json) and
OUT/rss.txt (seconds, kB), prints one table, writes OUT/summary.json, and exits 1 when a goal
is missed: any error, any call skipped or cut, or resident memory after the warm-up growing by
5 % or more (the last minute's median against the minute after the warm-up).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def load_windows(out: Path, rpcs):
    windows = {rpc: [] for rpc in rpcs}
    numbers = sorted({int(p.name.split("-", 1)[0]) for p in (out / "windows").glob("*.json")})
    for w in numbers:
        for rpc in rpcs:
            path = out / "windows" / f"{w}-{rpc}.json"
            run = json.loads(path.read_text())["run"] if path.exists() else None
            windows[rpc].append((w, run))
    return numbers, windows


def median_kb(samples, lo, hi):
    values = [kb for t, kb in samples if lo <= t < hi]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--window-s", type=float, required=True)
    ap.add_argument("--warmup-s", type=float, required=True)
    ap.add_argument("--chart", type=Path)
    ap.add_argument("--share", type=float, default=0.8, help="the load's share of the maximum (for the chart's title)")
    a = ap.parse_args()

    rates = {}
    for line in (a.out / "rates.txt").read_text().split("\n"):
        if line.strip():
            rpc, rate = line.split()
            rates[rpc] = float(rate)
    rpcs = list(rates)
    numbers, windows = load_windows(a.out, rpcs)
    warm = int(a.warmup_s // a.window_s)

    failures = []
    rows = []
    # The open-loop maxima (scripts/soak.sh's probes), where the run measured them.
    open_max = {}
    if (a.out / "open-max.txt").exists():
        for line in (a.out / "open-max.txt").read_text().split("\n"):
            if line.strip():
                rpc, rate, _fraction = line.split()
                open_max[rpc] = float(rate)
    for rpc in rpcs:
        maximum = json.loads((a.out / f"max-{rpc}.json").read_text())["run"]
        runs = [r for _, r in windows[rpc]]
        missing = sum(r is None for r in runs)
        runs = [r for r in runs if r is not None]
        after = [r for (w, r) in windows[rpc] if r is not None and w > warm]
        p99s = [r["latency_us"]["p99"] for r in after]
        row = {
            "rpc": rpc,
            "max_rps": open_max.get(rpc, maximum["rps"]),
            "closed_loop_max_rps": maximum["rps"],
            "rate": rates[rpc],
            "calls": sum(r["ok"] + r["errors"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "errors_by_code": {},
            "skipped": sum(r["skipped"] for r in runs),
            "cut": sum(r.get("cut", 0) for r in runs),
            "missing_windows": missing,
            "p99_us_median": statistics.median(p99s) if p99s else None,
            "p99_us_min": min(p99s) if p99s else None,
            "p99_us_max": max(p99s) if p99s else None,
        }
        for r in runs:
            for code, n in r["errors_by_code"].items():
                row["errors_by_code"][code] = row["errors_by_code"].get(code, 0) + n
        rows.append(row)
        if row["errors"] or row["skipped"] or row["cut"] or missing:
            failures.append(
                f"{rpc}: {row['errors']} errors {row['errors_by_code']}, {row['skipped']} skipped, "
                f"{row['cut']} cut, {missing} windows without a report"
            )

    samples = []
    for line in (a.out / "rss.txt").read_text().split("\n"):
        parts = line.split()
        # seconds, kB resident[, kB anonymous, kB file-backed, threads]
        if len(parts) >= 2:
            samples.append((float(parts[0]), int(parts[1])))
    end = samples[-1][0] if samples else 0.0
    after_warmup = median_kb(samples, a.warmup_s, a.warmup_s + 60)
    last_minute = median_kb(samples, end - 60, end + 1)
    growth = None
    if after_warmup and last_minute:
        growth = 100.0 * (last_minute - after_warmup) / after_warmup
        if growth >= 5.0:
            failures.append(f"resident memory grew {growth:.1f} % after the warm-up")
    else:
        failures.append("too few resident-memory samples")
    memory = {
        "samples": len(samples),
        "duration_s": end,
        "first_kb": samples[0][1] if samples else None,
        "after_warmup_kb": after_warmup,
        "last_minute_kb": last_minute,
        "max_kb": max(kb for _, kb in samples) if samples else None,
        "growth_pct": growth,
    }

    print(f"soak: {len(numbers)} windows of {a.window_s:.0f} s, warm-up {a.warmup_s:.0f} s")
    print(
        f"{'rpc':<18}{'max/s':>9}{'rate/s':>9}{'calls':>9}{'errors':>8}{'skipped':>8}{'cut':>5}"
        f"{'p99 min':>10}{'p99 med':>10}{'p99 max':>10}  (µs, windows after the warm-up)"
    )
    fmt = lambda v: f"{v:.0f}" if v is not None else "-"  # noqa: E731
    for r in rows:
        print(
            f"{r['rpc']:<18}{r['max_rps']:>9.0f}{r['rate']:>9.0f}{r['calls']:>9}{r['errors']:>8}"
            f"{r['skipped']:>8}{r['cut']:>5}{fmt(r['p99_us_min']):>10}{fmt(r['p99_us_median']):>10}"
            f"{fmt(r['p99_us_max']):>10}"
        )
    if growth is not None:
        print(
            f"server RSS: {memory['first_kb'] / 1024:.1f} MiB at start, "
            f"{after_warmup / 1024:.1f} MiB after the warm-up, {last_minute / 1024:.1f} MiB in the "
            f"last minute ({growth:+.2f} %), max {memory['max_kb'] / 1024:.1f} MiB"
        )
    (a.out / "summary.json").write_text(json.dumps({"rpcs": rows, "memory": memory}, indent=2))

    if a.chart:
        draw(a, samples, numbers, windows, rpcs)
        print(f"chart: {a.chart}")
    for f in failures:
        print(f"goal missed: {f}")
    sys.exit(1 if failures else 0)


def draw(a, samples, numbers, windows, rpcs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.6), sharex=True, dpi=90)
    top.plot([t / 60 for t, _ in samples], [kb / 1024 for _, kb in samples], lw=1.2)
    top.axvline(a.warmup_s / 60, color="grey", ls=":", lw=1)
    top.set_ylabel("server RSS (MiB)")
    lo = min(kb for _, kb in samples) / 1024
    hi = max(kb for _, kb in samples) / 1024
    top.set_ylim(0, hi * 1.15 if hi > 0 else 1)
    top.set_title(
        f"ferrite serve, mixed load at {100 * a.share:.0f} % of its maximum (RSS {lo:.0f}-{hi:.0f} MiB)", fontsize=10
    )
    for rpc in rpcs:
        pts = [((w - 0.5) * a.window_s / 60, r["latency_us"]["p99"] / 1000) for w, r in windows[rpc] if r]
        bottom.plot([x for x, _ in pts], [y for _, y in pts], marker=".", lw=1, label=rpc)
    bottom.axvline(a.warmup_s / 60, color="grey", ls=":", lw=1)
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel(f"p99 per {a.window_s:.0f} s (ms)")
    bottom.set_xlabel("minutes")
    bottom.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(a.chart)


if __name__ == "__main__":
    main()
