"""Checks that the peer answers Recommend and Price as Ferrite does, over gRPC on both sides
(the same requests to `ferrite serve` and to recs_pricing_glue.py, both on stores
materialized from the same data). Starts nothing itself: run_parity.sh starts both sides.

    python parity.py --ferrite 127.0.0.1:50051 --peer 127.0.0.1:50072 --users 300

Recommend, for a sample of the bench's users (ids 1,000,000 + key, key < 2000: 178 of them
have no taste row, cold start) and a few ids no view knows, in four shapes of request: the
default (top_k 0: the pipeline's 20); top_k 50 with three exclusions and a basket item (the
first items of Ferrite's default answer); a category filter (every category in turn; FAISS's
selector cannot be used then: the exact scan); top_k 100 with every item of one category
excluded. Equal when the same item ids come in the same order with the same categories,
cold_start, retrieved count and retrieval plan, and scores within --tol. An answer of Ferrite
that is its fallback (the pipeline's latency budget ran out: the two services share the
machine) is asked again, twice at most, then left out and counted. An order that differs
only between items whose ranker scores are within --tol of each other is counted apart, as a
near-tie (float32 sums in another order: numpy's BLAS against candle's gemm).
Price, for every item of the sample (ids 3,000,001..3,000,500) and one unknown id: the same
chosen price, bound, candidate count, current and floor price, and expected units within
--tol (relative). Errors must match in gRPC status code.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter

import grpc

import recs_pricing_glue as glue


def call(fn, request):
    try:
        return fn(request, timeout=10.0), None
    except grpc.RpcError as e:
        return None, e.code()


def ferrite_call(fn, request, tries: int = 3):
    """Ferrite's answer; one that is a fallback (its latency budget ran out on a busy machine:
    20 ms for recommendations, 10 ms for pricing) is asked again, up to `tries` times."""
    for _ in range(tries):
        answer, err = call(fn, request)
        if err or not answer.meta.fallback:
            break
    return answer, err


def close(a: float, b: float, tol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(a), abs(b))


# The largest differences seen between equal answers, by what.
WORST: Counter = Counter()


def worst(what: str, a: float, b: float):
    if not (math.isnan(a) and math.isnan(b)):
        WORST[what] = max(WORST[what], abs(a - b))


def compare_recs(mine, theirs, tol: float) -> str | None:
    """None when equal; else "near_tie" or a description of the difference."""
    a = [(i.item_id, i.score, i.retrieval_score, i.category) for i in mine.items]
    b = [(i.item_id, i.score, i.retrieval_score, i.category) for i in theirs.items]
    if mine.meta.cold_start != theirs.meta.cold_start:
        return f"cold_start {mine.meta.cold_start} vs {theirs.meta.cold_start}"
    if (mine.retrieved, mine.retrieval_plan) != (theirs.retrieved, theirs.retrieval_plan):
        return f"retrieved {mine.retrieved}/{mine.retrieval_plan!r} vs {theirs.retrieved}/{theirs.retrieval_plan!r}"
    if [x[0] for x in a] == [x[0] for x in b]:
        for x, y in zip(a, b):
            if x[3] != y[3]:
                return f"item {x[0]}: category {x[3]!r} vs {y[3]!r}"
            if not close(x[1], y[1], tol) or not close(x[2], y[2], tol):
                return f"item {x[0]}: score {x[1]!r}/{x[2]!r} vs {y[1]!r}/{y[2]!r}"
        for x, y in zip(a, b):
            worst("Recommend score", x[1], y[1])
            worst("Recommend retrieval_score", x[2], y[2])
        return None
    # A near-tie: the first difference is between items whose scores (ours or theirs) are
    # within tol of each other.
    first = next(k for k in range(min(len(a), len(b)) + 1) if k >= min(len(a), len(b)) or a[k][0] != b[k][0])
    if first < min(len(a), len(b)):
        theirs_scores = {x[0]: x[1] for x in b}
        mine_scores = {x[0]: x[1] for x in a}
        x, y = a[first], b[first]
        sx = theirs_scores.get(x[0], mine_scores[x[0]])
        sy = mine_scores.get(y[0], theirs_scores[y[0]])
        if abs(sx - sy) <= tol:
            return (f"near_tie at #{first}: peer {x[0]} ({x[1]!r}) before {y[0]}, Ferrite {y[0]} "
                    f"({y[1]!r}) before {x[0]}")
    return (f"items differ from #{first}: peer {[x[0] for x in a[first:first + 5]]} vs "
            f"Ferrite {[x[0] for x in b[first:first + 5]]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferrite", required=True, help="host:port of ferrite serve")
    ap.add_argument("--peer", required=True, help="host:port of recs_pricing_glue.py")
    ap.add_argument("--users", type=int, default=300, help="users of the sample (of 2000)")
    ap.add_argument("--items", type=int, default=500, help="items of the sample (of 500)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    glue.generate_stubs(glue.ROOT / "proto")
    from ferrite.v1 import scoring_pb2 as pb, scoring_pb2_grpc

    ferrite = scoring_pb2_grpc.ScoringServiceStub(grpc.insecure_channel(args.ferrite))
    peer = scoring_pb2_grpc.ScoringServiceStub(grpc.insecure_channel(args.peer))
    rng = random.Random(args.seed)
    users = sorted(rng.sample(range(1_000_000, 1_002_000), min(args.users, 2000)))
    users += [999, 1_009_999]  # no view has them
    categories = ["fashion", "electronics", "home_garden", "health_beauty", "sports", "toys", "books",
                  "grocery", "jewelry", "pet_supplies"]

    outcomes: Counter = Counter()
    problems: list[str] = []

    def check(kind: str, request):
        (mine, my_err), (theirs, their_err) = call(peer.Recommend, request), ferrite_call(ferrite.Recommend, request)
        if theirs is not None and theirs.meta.fallback:
            outcomes[(kind, "fallback")] += 1
            return theirs
        if my_err or their_err:
            verdict = None if my_err == their_err else f"status {my_err} vs {their_err}"
        else:
            verdict = compare_recs(mine, theirs, args.tol)
        if verdict is None:
            outcomes[(kind, "equal")] += 1
        elif verdict.startswith("near_tie"):
            outcomes[(kind, "near_tie")] += 1
            problems.append(f"Recommend {kind} user {request.user_id_int}: {verdict}")
        else:
            outcomes[(kind, "differ")] += 1
            problems.append(f"Recommend {kind} user {request.user_id_int}: {verdict}")
        return theirs

    for n, user in enumerate(users):
        default = check("default", pb.RecommendRequest(user_id_int=user))
        ids = [i.item_id for i in default.items] if default else []
        if len(ids) >= 4:
            check("exclude", pb.RecommendRequest(
                user_id_int=user, top_k=50, exclude_item_ids=ids[:3],
                context=pb.RecommendContext(page="basket", basket_item_ids=ids[3:4]),
            ))
        check("category", pb.RecommendRequest(
            user_id_int=user, context=pb.RecommendContext(category=categories[n % len(categories)])
        ))
        if n % 10 == 0 and default is not None:
            cat = categories[(n // 10) % len(categories)]
            check("top100", pb.RecommendRequest(
                user_id_int=user, top_k=100,
                exclude_item_ids=[i.item_id for i in default.items if i.category == cat],
            ))
    check("bad", pb.RecommendRequest(user_id="x12", top_k=5))
    check("bad", pb.RecommendRequest(user_id_int=users[0], top_k=101))

    items = list(range(3_000_001, 3_000_001 + min(args.items, 500))) + [3_999_999]
    for item in items:
        request = pb.PriceRequest(item_id_int=item)
        (mine, my_err), (theirs, their_err) = call(peer.Price, request), ferrite_call(ferrite.Price, request)
        if theirs is not None and theirs.meta.fallback and not (mine is not None and mine.meta.fallback):
            outcomes[("price", "fallback")] += 1
            continue
        if my_err or their_err:
            verdict = None if my_err == their_err else f"status {my_err} vs {their_err}"
        elif (mine.price, mine.bound, mine.candidates, mine.meta.fallback) != (
            theirs.price, theirs.bound, theirs.candidates, theirs.meta.fallback
        ):
            verdict = (f"price {mine.price} {mine.bound} ({mine.candidates}) vs "
                       f"{theirs.price} {theirs.bound} ({theirs.candidates})")
        elif not (close(mine.current_price, theirs.current_price, 0) and close(mine.floor_price, theirs.floor_price, 0)):
            verdict = f"current/floor {mine.current_price}/{mine.floor_price} vs {theirs.current_price}/{theirs.floor_price}"
        elif not close(mine.expected_units, theirs.expected_units, args.tol):
            verdict = f"units {mine.expected_units!r} vs {theirs.expected_units!r} (same price)"
        else:
            verdict = None
            worst("Price expected_units", mine.expected_units, theirs.expected_units)
        if verdict is None:
            outcomes[("price", "equal")] += 1
        else:
            outcomes[("price", "differ")] += 1
            problems.append(f"Price item {item}: {verdict}")

    kinds = list(dict.fromkeys(k for k, _ in outcomes))
    for kind in kinds:
        total = sum(v for (k, _), v in outcomes.items() if k == kind)
        print(f"{kind:>9}: {total} requests, {outcomes[(kind, 'equal')]} equal, "
              f"{outcomes[(kind, 'near_tie')]} near-tie order, {outcomes[(kind, 'differ')]} differ, "
              f"{outcomes[(kind, 'fallback')]} not compared (Ferrite's fallback thrice)")
    for p in problems[: (None if args.verbose else 20)]:
        print("  " + p)
    for what, d in sorted(WORST.items()):
        print(f"  largest |peer - Ferrite| in equal answers, {what}: {d:.3g}")
    differ = sum(v for (_, o), v in outcomes.items() if o == "differ")
    ties = sum(v for (_, o), v in outcomes.items() if o == "near_tie")
    skipped = sum(v for (_, o), v in outcomes.items() if o == "fallback")
    total = sum(outcomes.values())
    print(f"parity: {total} requests, {total - differ - ties - skipped} equal, {ties} near-tie order, "
          f"{differ} differ, {skipped} not compared")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
