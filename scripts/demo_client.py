"""Sends one example request to each Ferrite service and prints the answer with its latency.

Knows no proto files: message types come from the server's reflection service, requests are
written as JSON, exactly as a newcomer with grpcurl would.

    .venv/bin/python scripts/demo_client.py --addr 127.0.0.1:50051
"""

import argparse
import base64
import json
import pathlib
import sys
import time

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# (service, method, request as JSON). Each capability adds its example here.
EXAMPLES = [
    ("grpc.health.v1.Health", "Check", {}),
    ("inference.GRPCInferenceService", "ServerLive", {}),
    ("inference.GRPCInferenceService", "ServerReady", {}),
    ("inference.GRPCInferenceService", "ServerMetadata", {}),
    ("ferrite.v1.AdminService", "GetServerInfo", {}),
    ("inference.GRPCInferenceService", "RepositoryIndex", {}),
    ("inference.GRPCInferenceService", "ModelMetadata", {"name": "fraud_logreg"}),
    (
        "inference.GRPCInferenceService",
        "ModelInfer",
        {
            "model_name": "fraud_logreg",
            "model_version": "stable",
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 8],
                    "contents": {"fp32_contents": [2.1, 3.5, 0.2, 1, 1, 4, 0.05, 1]},
                }
            ],
        },
    ),
    (
        "inference.GRPCInferenceService",
        "ModelInfer",
        {
            "model_name": "ranker_wide_deep",
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [2, 16],
                    "contents": {"fp32_contents": [0.1 * i for i in range(32)]},
                }
            ],
        },
    ),
    (
        "ferrite.v1.FeatureService",
        "GetOnlineFeatures",
        {
            "features": {"features": ["user_profile:country", "user_stats:avg_amount_30d", "txn_features:amount_vs_avg_30d"]},
            "entities": {"user_id": {"values": [{"int_value": 1000001}, {"int_value": 1000002}]}},
            "request_context": {
                "amount": {"values": [{"float_value": 120.0}, {"float_value": 15.0}]},
                "hour_of_day": {"values": [{"int_value": 3}, {"int_value": 14}]},
            },
        },
    ),
    ("ferrite.v1.ScoringService", "ListPipelines", {}),
]

# The last transactions of features/data/transactions.parquet (the first two were fraud),
# scored by the `fraud` pipeline (pipelines/fraud.toml) as a checkout would send them.
TRANSACTIONS = [
    {"transaction_id": "10029612", "user_id_int": 1001593, "merchant_id_int": 2000097, "amount": 319.65,
     "currency": "USD", "device_type": "android", "event_time_us": 1790671880084405},
    {"transaction_id": "10029989", "user_id": "1001692", "merchant_id": "2000121", "amount": 103.68,
     "currency": "EUR", "device_type": "web", "event_time_us": 1790717947393468},
    {"transaction_id": "10029998", "user_id_int": 1001384, "merchant_id_int": 2000102, "amount": 179.64,
     "currency": "USD", "device_type": "ios", "event_time_us": 1790724410475460},
    {"transaction_id": "10030000", "user_id_int": 1000175, "merchant_id_int": 2000035, "amount": 55.27,
     "currency": "USD", "device_type": "web", "event_time_us": 1790725851574691},
    # A user no feature view knows: the cold-start answer.
    {"transaction_id": "new-user", "user_id_int": 1999999999, "merchant_id_int": 2000035, "amount": 80.0,
     "currency": "EUR", "device_type": "web", "event_time_us": 1790725851574691},
]


def fraud_line(answer, ms):
    """One transaction's decision, score, latency and reasons, on one line."""
    meta = answer.get("meta", {})
    latency = meta.get("latency") or {}
    decision = answer["decision"].replace("FRAUD_DECISION_", "").lower()
    parts = [f"txn {answer['transactionId']:>9}  {decision:<8} score {answer['score']:.4f}  {ms:6.2f} ms"]
    if meta.get("variant"):
        parts.append(f"variant {meta['variant']} (model version {meta['modelVersion']})")
    if latency:
        parts.append(
            f"(server {latency['totalUs']} us: features {latency['featuresUs']}, model {latency['inferenceUs']})"
        )
    if meta.get("fallback"):
        parts.append(f"FALLBACK: {meta['fallbackReason']}")
    if meta.get("coldStart"):
        parts.append("cold start")
    reasons = ", ".join(f"{r['feature']}={float(r['value']):.3g} ({float(r['contribution']):+.3f})" for r in answer.get("reasons", []))
    if reasons:
        parts.append(f"reasons: {reasons}")
    return "  ".join(parts)


# Recommendations for a product page (pipelines/recommendations.toml): a user with a click
# history, the same user on a basket page with a category, and a user nobody knows.
RECOMMEND = [
    ("user 1000089", {"user_id_int": 1000089, "top_k": 5}),
    ("user 1000089, basket page, books only",
     {"user_id": "1000089", "top_k": 3, "context": {"page": "basket", "category": "books", "basket_item_ids": ["3000115"]}}),
    ("an unknown user", {"user_id_int": 1999999999, "top_k": 3}),
]

# Prices for a few catalogue items (pipelines/pricing.toml).
PRICE_ITEMS = [3000022, 3000005, 3000117, 3000240]


def recommend_line(label, answer, ms):
    meta = answer.get("meta", {})
    latency = meta.get("latency") or {}
    head = f"{label}: {len(answer['items'])} items in {ms:.2f} ms"
    if latency:
        head += (f" (server {latency['totalUs']} us: features {latency['featuresUs']}, "
                 f"models {latency['inferenceUs']}; {answer['retrieved']} retrieved, plan {answer['retrievalPlan'] or '-'})")
    if meta.get("fallback"):
        head += f"  FALLBACK: {meta['fallbackReason']}"
    if meta.get("coldStart"):
        head += "  cold start: popular in-stock items"
    items = ", ".join(f"{i['itemId']} {i['category']} {i['score']:.3f}" for i in answer["items"])
    return f"{head}\n    {items}"


def price_line(item, answer, ms):
    meta = answer.get("meta", {})
    latency = meta.get("latency") or {}
    line = (f"item {item}: {answer['price']:.2f} {answer['currency']} (now {answer['currentPrice']:.2f}, "
            f"floor {float(answer['floorPrice']):.2f}), expected {float(answer['expectedUnits']):.2f} units/day, "
            f"revenue {float(answer['expectedRevenue']):.2f}, decided by: {answer['bound']}, "
            f"{answer['candidates']} candidates, {ms:.2f} ms")
    if latency:
        line += f" (server {latency['totalUs']} us: model {latency['inferenceUs']})"
    if meta.get("fallback"):
        line += f"  FALLBACK: {meta['fallbackReason']}"
    return line


def call(channel, pool, service, method, request_json):
    desc = pool.FindServiceByName(service).methods_by_name[method]
    request_cls = message_factory.GetMessageClass(desc.input_type)
    response_cls = message_factory.GetMessageClass(desc.output_type)
    stub = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    request = json_format.ParseDict(request_json, request_cls())
    start = time.perf_counter()
    response = stub(request, timeout=5)
    elapsed_ms = (time.perf_counter() - start) * 1000
    answer = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    return readable(response, answer), elapsed_ms


NUMPY_TYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "BOOL": "?"}


def readable(response, answer):
    """Shows raw output tensors (KServe ModelInfer) as numbers instead of base64."""
    raw = getattr(response, "raw_output_contents", None)
    if raw:
        import numpy as np

        answer["rawOutputContents"] = [
            np.frombuffer(data, dtype=NUMPY_TYPES[out.datatype]).reshape(list(out.shape)).tolist()
            if out.datatype in NUMPY_TYPES
            else "(bytes)"
            for out, data in zip(response.outputs, raw)
        ]
    return answer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:50051")
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    failures = 0
    for service, method, request in EXAMPLES:
        try:
            answer, ms = call(channel, pool, service, method, request)
            print(f"{service}/{method}  {ms:7.2f} ms  {json.dumps(answer, sort_keys=True)}")
        except grpc.RpcError as e:
            failures += 1
            print(f"{service}/{method}  FAILED {e.code().name}: {e.details()}")
    print("ferrite.v1.ScoringService/ScoreFraud (fraud decisions, with latency and reasons):")
    for t in TRANSACTIONS:
        try:
            answer, ms = call(channel, pool, "ferrite.v1.ScoringService", "ScoreFraud", {**t, "include_latency": True})
            print("  " + fraud_line(answer, ms))
        except grpc.RpcError as e:
            failures += 1
            print(f"  FAILED {e.code().name}: {e.details()}")
    try:
        answer, ms = call(channel, pool, "ferrite.v1.ScoringService", "ScoreFraudBatch", {"transactions": TRANSACTIONS})
        print(f"ferrite.v1.ScoringService/ScoreFraudBatch  {len(TRANSACTIONS)} transactions in {ms:.2f} ms")
        for r in answer["results"]:
            print("  " + fraud_line(r, ms))
    except grpc.RpcError as e:
        failures += 1
        print(f"ferrite.v1.ScoringService/ScoreFraudBatch  FAILED {e.code().name}: {e.details()}")
    print("ferrite.v1.ScoringService/Recommend (two-tower retrieval, filters, ranker, at most 4 per category):")
    for label, r in RECOMMEND:
        try:
            answer, ms = call(channel, pool, "ferrite.v1.ScoringService", "Recommend", {**r, "include_latency": True})
            print("  " + recommend_line(label, answer, ms))
        except grpc.RpcError as e:
            failures += 1
            print(f"  FAILED {e.code().name}: {e.details()}")
    print("ferrite.v1.ScoringService/Price (demand model over candidate prices, inside the bounds):")
    for item in PRICE_ITEMS:
        try:
            answer, ms = call(channel, pool, "ferrite.v1.ScoringService", "Price", {"item_id_int": item, "include_latency": True})
            print("  " + price_line(item, answer, ms))
        except grpc.RpcError as e:
            failures += 1
            print(f"  FAILED {e.code().name}: {e.details()}")
    failures += experiments(channel, pool)
    failures += visual_search(channel, pool)
    return 1 if failures else 0


def experiments(channel, pool):
    """The running experiments with their canary, one unit's sticky assignment, and a forced
    variant (QA) answering a fraud call."""
    print("ferrite.v1.ExperimentService (sticky splits between model versions, canary, exposure log):")
    try:
        answer, ms = call(channel, pool, "ferrite.v1.ExperimentService", "ListExperiments", {})
        for e in answer.get("experiments", []):
            split = ", ".join(f"{v['name']}=v{v['modelVersion']} {100 * v.get('currentWeight', 0):.0f}%"
                              for v in e["variants"])
            canary = e.get("canary") or {}
            print(f"  {e['name']} on pipeline {e['target']} by {e['unit']}: {split}; state {e['state']}"
                  + (f", canary {canary['variant']} at {100 * canary.get('share', 0):.0f}%" if canary else "")
                  + f"  ({ms:.2f} ms)")
            for user in ("1001593", "1001692", "1000089"):
                a, ms = call(channel, pool, "ferrite.v1.ExperimentService", "GetAssignment",
                             {"experiment": e["name"], "unit_id": user})
                print(f"    user {user} -> {a['variant']} (model version {a['modelVersion']}, "
                      f"bucket {a.get('bucket', 0):.4f})  {ms:.2f} ms")
            forced = {**TRANSACTIONS[0], "force_variant": e["variants"][-1]["name"]}
            answer, ms = call(channel, pool, "ferrite.v1.ScoringService", "ScoreFraud", forced)
            print(f"    forced to {forced['force_variant']}: " + fraud_line(answer, ms))
        return 0
    except grpc.RpcError as e:
        print(f"  FAILED {e.code().name}: {e.details()}")
        return 1


PHOTOS = pathlib.Path(__file__).resolve().parent.parent / "data" / "photos"


def search_line(label, answer, ms):
    hits = ", ".join(f"{h['itemId']} {h['score']:.3f}" for h in answer.get("hits", []))
    line = f"{label}: plan {answer.get('plan')}, {ms:.1f} ms"
    latency = answer.get("latency")
    if latency:
        line += (f" (server {latency['totalUs']} us: decode {latency['decodeUs']}, "
                 f"embed {latency['embedUs']}, search {latency['searchUs']})")
    return line + f"\n    {hits}"


def visual_search(channel, pool):
    """Visual search over the sample photos (data/photos, indexed by ferrite build-index): the
    coffee photo's bytes as the query, then with a category filter, then the items most like
    one catalogue item."""
    print("ferrite.v1.SearchService (photo -> EfficientNet-Lite0 embedding -> FAISS, with filters):")
    service = "ferrite.v1.SearchService"
    try:
        image = base64.b64encode((PHOTOS / "coffee.png").read_bytes()).decode()
        for label, request in [
            ("coffee.png, top 5", {"image": image, "top_k": 5, "include_latency": True}),
            ("coffee.png, categories kitchen or home",
             {"image": image, "top_k": 5, "include_latency": True,
              "filter": {"categories": ["kitchen", "home"]}}),
        ]:
            answer, ms = call(channel, pool, service, "VisualSearch", request)
            print("  " + search_line(label, answer, ms))
        answer, ms = call(channel, pool, service, "SimilarItems",
                          {"item_id": "photo-chelsea", "top_k": 5, "include_latency": True})
        print("  " + search_line("SimilarItems photo-chelsea", answer, ms))
        return 0
    except (grpc.RpcError, OSError) as e:
        detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
        print(f"  FAILED {detail}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
