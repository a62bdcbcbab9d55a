"""Checks that the peer computes the model's input as Ferrite does: for sample transactions, the
glue's vector (Feast + ferrite_defs.Expr, in this process) against Ferrite's values of the
same feature service (GetOnlineFeatures with the transaction as request context), both as
float32, NaN equal to NaN. Run with both stores materialized (scripts/bench_pipelines.sh
does, and with PARITY=1 runs this before the load).

    python parity.py --ferrite 127.0.0.1:50051 --feast-repo OUT/feast --transactions N
"""

from __future__ import annotations

import argparse
import sys
import types
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

import glue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferrite", required=True, help="host:port of ferrite serve")
    ap.add_argument("--feast-repo", type=Path, required=True)
    ap.add_argument("--features", type=Path, default=glue.ROOT / "features")
    ap.add_argument("--pipeline", type=Path, default=glue.ROOT / "pipelines" / "fraud.toml")
    ap.add_argument("--data", type=Path, default=glue.ROOT / "features" / "data")
    ap.add_argument("--transactions", type=int, default=500)
    args = ap.parse_args()

    glue.generate_stubs(glue.ROOT / "proto")
    from ferrite.v1 import common_pb2, features_pb2, features_pb2_grpc, scoring_pb2  # noqa: E402
    from inference import grpc_service_pb2, grpc_service_pb2_grpc  # noqa: E402

    scorer = glue.Scorer(
        types.SimpleNamespace(
            pipeline=args.pipeline, model_name=None, features=args.features, features_json=None,
            feast_repo=args.feast_repo, model_addr="127.0.0.1:1",
        ),
        scoring_pb2, common_pb2, grpc_service_pb2, grpc_service_pb2_grpc,
    )
    service = "fraud_v2"
    if args.pipeline.exists():
        import tomllib

        service = tomllib.loads(args.pipeline.read_text()).get("feature_service", service)
    stub = features_pb2_grpc.FeatureServiceStub(grpc.insecure_channel(args.ferrite))
    txns = pd.read_parquet(args.data / "transactions.parquet").head(args.transactions)
    mismatches: Counter = Counter()
    examples = {}
    for t in txns.itertuples():
        ts = int(t.event_timestamp.value // 1000)
        request = scoring_pb2.ScoreFraudRequest(
            transaction_id=str(t.transaction_id), user_id_int=t.user_id, merchant_id_int=t.merchant_id,
            amount=t.amount, currency=t.currency, device_type=t.device_type, event_time_us=ts,
        )
        mine = scorer.features([request])[0]
        V = common_pb2.Value
        answer = stub.GetOnlineFeatures(
            features_pb2.GetOnlineFeaturesRequest(
                feature_service=service,
                entities={
                    "user_id": features_pb2.ValueList(values=[V(int_value=t.user_id)]),
                    "merchant_id": features_pb2.ValueList(values=[V(int_value=t.merchant_id)]),
                },
                request_context={
                    "amount": features_pb2.ValueList(values=[V(float_value=t.amount)]),
                    "currency": features_pb2.ValueList(values=[V(string_value=t.currency)]),
                    "device_type": features_pb2.ValueList(values=[V(string_value=t.device_type)]),
                    "event_timestamp": features_pb2.ValueList(values=[V(int_value=ts)]),
                },
            )
        )
        names = list(answer.feature_names)
        vec = answer.results[0]
        theirs = np.full(len(names), np.nan, dtype=np.float32)
        for j, (v, status) in enumerate(zip(vec.values, vec.statuses)):
            if status == features_pb2.FEATURE_STATUS_PRESENT:
                kind = v.WhichOneof("kind")
                theirs[j] = float(getattr(v, kind)) if kind in ("float_value", "int_value", "bool_value") else np.nan
        if [n.replace(":", ".") for n in names] != [f"{v}.{f}" for v, f in scorer.order]:
            sys.exit(f"Ferrite's order differs from the service's: {names[:5]}...")
        same = (mine == theirs) | (np.isnan(mine) & np.isnan(theirs))
        for j in np.flatnonzero(~same):
            mismatches[names[j]] += 1
            examples.setdefault(names[j], (t.transaction_id, float(mine[j]), float(theirs[j])))
    n = len(txns)
    if not mismatches:
        print(f"parity: {n} transactions x {len(scorer.order)} features, all equal as float32")
        return
    print(f"parity: {n} transactions, {sum(mismatches.values())} values differ in {len(mismatches)} features:")
    for name, count in mismatches.most_common():
        tid, a, b = examples[name]
        print(f"  {name}: {count} transactions, e.g. {tid}: peer {a!r}, Ferrite {b!r}")
    sys.exit(1)


if __name__ == "__main__":
    main()
