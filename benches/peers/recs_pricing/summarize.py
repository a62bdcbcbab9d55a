"""The table of run.sh's benchmark: `ferrite bench --json` files bench-<rpc>-<side>.json of
one output folder, Ferrite and the peer side by side per RPC, with the peer / Ferrite ratios.

    python summarize.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    runs = {}
    for path in sorted(out.glob("bench-*-*.json")):
        rpc, side = path.stem.removeprefix("bench-").rsplit("-", 1)
        report = json.loads(path.read_text())
        runs[(rpc, side)] = (report["run"], report.get("host", {}).get("cpu", {}))
    if not runs:
        sys.exit(f"no bench-*-*.json in {out}")
    print("| rpc | side | calls ok / sent | errors | fallbacks | calls/s | p50 ms | p99 ms | host busy % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (rpc, side), (run, cpu) in sorted(runs.items()):
        lat = run["latency_us"]
        print(
            f"| {rpc} | {side} | {run['ok']} / {run['sent']} | {run['errors']} | {run['fallbacks']} | "
            f"{run['rps']:.0f} | {lat['p50'] / 1e3:.2f} | {lat['p99'] / 1e3:.2f} | {cpu.get('busy_pct', float('nan')):.0f} |"
        )
    for rpc in sorted({r for r, _ in runs}):
        if (rpc, "ferrite") in runs and (rpc, "peer") in runs:
            f, p = runs[(rpc, "ferrite")][0], runs[(rpc, "peer")][0]
            print(
                f"{rpc}: the peer's p50 is {p['latency_us']['p50'] / f['latency_us']['p50']:.0f}x Ferrite's, "
                f"its throughput (one caller) {f['rps'] / max(p['rps'], 1e-9):.0f}x lower"
            )


if __name__ == "__main__":
    main()
