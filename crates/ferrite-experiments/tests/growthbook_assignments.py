"""Assignments by the `growthbook` Python package, for tests/python_parity.rs.

Prints one header line per config, `config <index> <seed> <coverage> <w0,w1,...>`, then one
line per unit, `<index> <unit> <variation>` where variation is GrowthBook's variationId, or
-1 when the unit is outside the coverage (`inExperiment` false). Units are drawn from a
seeded RNG so both sides see the same ids without shipping them.

Usage: python growthbook_assignments.py <units per config>
"""

import random
import string
import sys

from growthbook import Experiment, GrowthBook

CONFIGS = [
    # (seed, coverage, weights)
    ("fraud-gbdt-v7", 1.0, [0.5, 0.5]),
    ("recs-two-tower", 1.0, [0.95, 0.05]),
    ("pricing-demand", 0.8, [0.9, 0.1]),
    ("ranker/v3", 0.35, [0.2, 0.3, 0.5]),
    ("search-embed", 1.0, [0.25, 0.25, 0.25, 0.25]),
]


def main() -> None:
    per_config = int(sys.argv[1])
    rng = random.Random(20261201)
    # Non-ASCII letters exercise the UTF-16 path of the hash.
    alphabet = string.ascii_letters + string.digits + "-_:éü中😀"
    gb = GrowthBook(attributes={})
    out = []
    for index, (seed, coverage, weights) in enumerate(CONFIGS):
        out.append(f"config {index} {seed} {coverage} {','.join(map(str, weights))}")
        for _ in range(per_config):
            unit = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
            gb.set_attributes({"id": unit})
            result = gb.run(
                Experiment(
                    key=f"exp-{index}",
                    variations=list(range(len(weights))),
                    weights=weights,
                    coverage=coverage,
                    hashVersion=2,
                    seed=seed,
                )
            )
            variation = result.variationId if result.inExperiment else -1
            out.append(f"{index} {unit} {variation}")
    sys.stdout.buffer.write(("\n".join(out) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
