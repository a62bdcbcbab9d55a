"""The peer stack's scoring service: ferrite.v1.ScoringService/ScoreFraud (and ScoreFraudBatch)
in Python, the way a team without Ferrite would build it: Feast for the stored features (Redis
online store), the request-time features computed here, and the model called on a model
server (MLServer) over KServe v2 gRPC.

    python glue.py --port 50071 --feast-repo /tmp/feast --model-addr 127.0.0.1:8081

It follows the same definitions as Ferrite: the feature service of pipelines/fraud.toml gives
the vector's order (features/*.toml), the request views' expressions are evaluated with
ferrite_defs.Expr, thresholds and the model's input and output come from the pipeline file.
It answers score, decision and transaction id; no reasons (Ferrite computes them too, so
leaving them out favours the peer), no field rules, no fallback: a failure is an error.
Stubs are generated from proto/ with grpcio-tools at start; nothing generated is committed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import tomllib
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from grpc_tools import protoc

import ferrite_defs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def generate_stubs(proto_root: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="ferrite-peer-stubs-"))
    protos = ["ferrite/v1/common.proto", "ferrite/v1/features.proto", "ferrite/v1/scoring.proto",
              "inference/grpc_service.proto",
              "inference/model_config.proto"]
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *protos])
    if code != 0:
        raise SystemExit(f"protoc failed on {proto_root}")
    sys.path.insert(0, str(out))
    return out


class Scorer:
    def __init__(self, args, pb, common, ipb, ispb):
        self.pb, self.common, self.ipb = pb, common, ipb
        pipeline = tomllib.loads(Path(args.pipeline).read_text()) if Path(args.pipeline).exists() else {}
        fraud = pipeline.get("fraud", {})
        self.review_at = float(fraud.get("review_at", 0.3))
        self.decline_at = float(fraud.get("decline_at", 0.8))
        model = pipeline.get("model", {})
        self.model_name = args.model_name or model.get("name", "fraud_txn_gbdt")
        self.model_input = model.get("input", "features")
        self.model_output = model.get("output", "probabilities")
        self.output_index = int(model.get("output_index", 1))
        service = pipeline.get("feature_service", "fraud_v2")

        reg = ferrite_defs.load(Path(args.features))
        self.order = reg.service(service)
        self.request_features = {
            (v, f.name): f.expr
            for v, rv in reg.request_views.items()
            for f in rv.features
        }
        self.join_keys = sorted({k for v, _ in self.order if v in reg.views for k in reg.join_keys(reg.views[v])})
        features_json = Path(args.features_json) if args.features_json else None
        if features_json and features_json.exists():
            names = json.loads(features_json.read_text()).get("features", [])
            mine = [f for _, f in self.order]
            if names and [n.split(":")[-1].split("__")[-1] for n in names] != mine:
                raise SystemExit(f"{features_json} lists other features than service {service!r}")

        from feast import FeatureStore
        from feast.infra.online_stores.online_store import OnlineStore

        # Feast 0.63 checks on every read whether the store supports versioned reads by
        # importing each optional online store; the imports that fail (extras not installed)
        # run again on every call, a quarter of the read's time here. No read here is
        # versioned: the check is skipped, in the peer's favour.
        OnlineStore._check_versioned_read_support = lambda self, grouped_refs: None
        self.store = FeatureStore(repo_path=str(args.feast_repo))
        self.feature_service = self.store.get_feature_service(service)
        self.width = len(self.order)
        self.model = ispb.GRPCInferenceServiceStub(grpc.insecure_channel(args.model_addr))

    def features(self, requests):
        """The model's input rows for the transactions, [n, width] float32."""
        rows = [self.entity_row(r) for r in requests]
        stored = self.store.get_online_features(
            features=self.feature_service, entity_rows=rows, full_feature_names=True
        ).to_dict()
        out = np.full((len(requests), self.width), np.nan, dtype=np.float32)
        for i, r in enumerate(requests):
            values = {
                "amount": r.amount,
                "currency": r.currency or None,
                "device_type": r.device_type or None,
                "event_timestamp": r.event_time_us or time.time_ns() // 1000,
            }
            for k, v in r.context.items():
                values[k] = getattr(v, v.WhichOneof("kind")) if v.WhichOneof("kind") else None
            for name, column in stored.items():
                view, _, feature = name.partition("__")
                if feature:
                    values[(view, feature)] = column[i]
            row = out[i]
            for j, key in enumerate(self.order):
                expr = self.request_features.get(key)
                row[j] = ferrite_defs.to_f32_input(expr.eval(values) if expr else values.get(key))
        return out

    def entity_row(self, r):
        row = {}
        for key in self.join_keys:
            if key == "user_id":
                row[key] = r.user_id_int if r.WhichOneof("user") == "user_id_int" else int(r.user_id)
            elif key == "merchant_id":
                row[key] = r.merchant_id_int if r.WhichOneof("merchant") == "merchant_id_int" else int(r.merchant_id)
            else:
                raise ValueError(f"no value for join key {key!r}")
        return row

    def scores(self, x):
        ipb = self.ipb
        request = ipb.ModelInferRequest(
            model_name=self.model_name,
            inputs=[ipb.ModelInferRequest.InferInputTensor(name=self.model_input, datatype="FP32", shape=list(x.shape))],
            outputs=[ipb.ModelInferRequest.InferRequestedOutputTensor(name=self.model_output)],
            raw_input_contents=[x.tobytes()],
        )
        answer = self.model.ModelInfer(request, timeout=5.0)
        for k, out in enumerate(answer.outputs):
            if out.name != self.model_output:
                continue
            if answer.raw_output_contents:
                data = np.frombuffer(answer.raw_output_contents[k], dtype=np.float32)
            else:
                data = np.asarray(out.contents.fp32_contents, dtype=np.float32)
            return data.reshape(x.shape[0], -1)[:, self.output_index].astype(np.float64)
        raise RuntimeError(f"the model server's answer has no output {self.model_output!r}")

    def answer(self, request, score, started):
        pb = self.pb
        decision = (
            pb.FRAUD_DECISION_DECLINE
            if score >= self.decline_at
            else pb.FRAUD_DECISION_REVIEW
            if score >= self.review_at
            else pb.FRAUD_DECISION_APPROVE
        )
        return pb.ScoreFraudResponse(
            score=float(score) if math.isfinite(score) else 0.0,
            decision=decision,
            transaction_id=request.transaction_id,
            meta=self.common.ResponseMeta(
                model_name=self.model_name,
                server_latency_us=int((time.perf_counter() - started) * 1e6),
            ),
        )


def make_servicer(spb_grpc, scorer):
    class Servicer(spb_grpc.ScoringServiceServicer):
        def ScoreFraud(self, request, context):
            started = time.perf_counter()
            score = scorer.scores(scorer.features([request]))[0]
            return scorer.answer(request, score, started)

        def ScoreFraudBatch(self, request, context):
            started = time.perf_counter()
            txns = list(request.transactions)
            if not txns:
                return scorer.pb.ScoreFraudBatchResponse()
            scores = scorer.scores(scorer.features(txns))
            return scorer.pb.ScoreFraudBatchResponse(
                results=[scorer.answer(t, s, started) for t, s in zip(txns, scores)]
            )

    return Servicer()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--feast-repo", type=Path, required=True)
    ap.add_argument("--model-addr", required=True, help="host:port of the model server's gRPC")
    ap.add_argument("--model-name", help="default: [model] name of the pipeline file")
    ap.add_argument("--features", type=Path, default=ROOT / "features")
    ap.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "fraud.toml")
    ap.add_argument("--features-json", type=Path, help="the model's features.json, checked against the order")
    ap.add_argument("--proto", type=Path, default=ROOT / "proto")
    ap.add_argument("--workers", type=int, default=16, help="gRPC server threads")
    args = ap.parse_args()

    generate_stubs(args.proto)
    from ferrite.v1 import common_pb2, scoring_pb2, scoring_pb2_grpc
    from inference import grpc_service_pb2, grpc_service_pb2_grpc

    scorer = Scorer(args, scoring_pb2, common_pb2, grpc_service_pb2, grpc_service_pb2_grpc)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    scoring_pb2_grpc.add_ScoringServiceServicer_to_server(make_servicer(scoring_pb2_grpc, scorer), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"glue listening on 127.0.0.1:{args.port} ({scorer.width} features, model {scorer.model_name})", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
