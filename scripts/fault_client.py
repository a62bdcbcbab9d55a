"""The client side of the fault scripts (scripts/fault_redis.sh, fault_kill9.sh,
fault_sigterm.sh): drives a running Ferrite server while the script breaks something, checks
what the server promised, and prints one JSON summary line. Exits 1 with a FAIL line on stderr
when a check fails.

Knows no proto files: message types come from the server's reflection service.

    redis    pushes and reads in a loop with a deadline per call while the script kills and
             restarts Redis; then checks every acknowledged push is readable
    push     pushes rows from several threads until the server dies (kill -9); writes the
             acknowledged ids
    verify   reads the acknowledged ids back (after a restart) and checks their values
    sigterm  keeps slow calls and two streams in flight, sends SIGTERM to the server, and checks
             in-flight calls finish, new connections are refused and the process exits in time
"""

import argparse
import json
import os
import pathlib
import queue
import signal
import sys
import threading
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

VIEW = "user_profile"
FEATURES = [f"{VIEW}:*"]
PRESENT = 1  # ferrite.v1.FeatureStatus.FEATURE_STATUS_PRESENT


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


class Api:
    """A channel and the message classes and methods the checks use, from reflection."""

    def __init__(self, addr, options=()):
        self.addr = addr
        self.channel = grpc.insecure_channel(addr, options=list(options))
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))

    def message(self, name):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(name))

    def method(self, service, name, channel=None):
        m = self.pool.FindServiceByName(service).methods_by_name[name]
        request = message_factory.GetMessageClass(m.input_type)
        response = message_factory.GetMessageClass(m.output_type)
        path = f"/{service}/{name}"
        make = (channel or self.channel).stream_stream if m.client_streaming else (channel or self.channel).unary_unary
        return make(path, request_serializer=request.SerializeToString, response_deserializer=response.FromString)


# --- user_profile rows: every value is a function of the user id, so a read can check it.


def profile_values(uid):
    return {
        "country": f"C{uid % 97}",
        "signup_channel": ["web", "ios", "android", "partner"][uid % 4],
        "account_age_days": uid % 1000,
        "is_verified": uid % 2 == 0,
        "loyalty_tier": ["none", "silver", "gold", "platinum"][uid % 4],
        "email_domain_risk": (uid % 100) / 100.0,
    }


def set_value(value, v):
    if isinstance(v, bool):
        value.bool_value = v
    elif isinstance(v, int):
        value.int_value = v
    elif isinstance(v, float):
        value.float_value = v
    else:
        value.string_value = v


def value_of(value):
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


class Features:
    def __init__(self, api):
        self.api = api
        self.push_request = api.message("ferrite.v1.PushFeaturesRequest")
        self.get_request = api.message("ferrite.v1.GetOnlineFeaturesRequest")
        self.push = api.method("ferrite.v1.FeatureService", "PushFeatures")
        self.get = api.method("ferrite.v1.FeatureService", "GetOnlineFeatures")

    def push_rows(self, uids, timeout):
        req = self.push_request(feature_view=VIEW)
        now = int(time.time()) - 1
        for uid in uids:
            row = req.rows.add()
            row.fields.get_or_create("user_id").int_value = uid
            for name, v in profile_values(uid).items():
                set_value(row.fields.get_or_create(name), v)
            row.event_timestamp.seconds = now
        answer = self.push(req, timeout=timeout)
        if answer.written != len(uids) or answer.rejected:
            fail(f"push of {uids} answered OK but wrote {answer.written}, rejected {answer.rejected}: {answer.errors}")
        return answer

    def read(self, uids, timeout):
        req = self.get_request()
        req.features.features.extend(FEATURES)
        ids = req.entities.get_or_create("user_id")
        for uid in uids:
            ids.values.add().int_value = uid
        return self.get(req, timeout=timeout)

    def missing(self, uids, timeout=10.0):
        """The ids among `uids` whose stored row is absent or differs from what was pushed."""
        bad = []
        for start in range(0, len(uids), 500):
            chunk = uids[start : start + 500]
            answer = self.read(chunk, timeout)
            names = [n.split(":", 1)[1] for n in answer.feature_names]
            for uid, result in zip(chunk, answer.results):
                want = profile_values(uid)
                got = {n: value_of(v) for n, v in zip(names, result.values)}
                statuses_ok = all(s == PRESENT for s in result.statuses)
                values_ok = all(
                    abs(got[n] - w) < 1e-9 if isinstance(w, float) else got.get(n) == w for n, w in want.items()
                )
                if not (statuses_ok and values_ok):
                    bad.append((uid, list(result.statuses), got))
        return bad


def code_name(e):
    return e.code().name if isinstance(e, grpc.RpcError) else type(e).__name__


# --- redis: calls with a deadline while Redis dies and comes back.


def run_redis(args):
    api = Api(args.addr)
    features = Features(api)
    control = pathlib.Path(args.control)
    deadline = args.deadline_ms / 1000.0
    limit = deadline + args.slack_ms / 1000.0
    acked = []
    codes = {}
    slow = []
    errors_while_down = 0
    worst = 0.0
    next_uid = args.first_id
    started = time.monotonic()
    restarted_at = None
    recovered_at = None
    streak = 0

    def timed(kind, fn):
        nonlocal worst
        t0 = time.monotonic()
        try:
            fn()
            code = "OK"
        except grpc.RpcError as e:
            code = code_name(e)
            if code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                fail(f"{kind} answered {code} ({e.details()!r}): an outage is UNAVAILABLE or a deadline")
        took = time.monotonic() - t0
        worst = max(worst, took)
        if took > limit:
            slow.append((kind, round(took, 3), code))
        codes[f"{kind} {code}"] = codes.get(f"{kind} {code}", 0) + 1
        return code == "OK"

    while True:
        now = time.monotonic()
        if now - started > args.max_seconds:
            fail(f"the run passed {args.max_seconds} s (restarted: {restarted_at is not None})")
        down = (control / "killed").exists() and not (control / "restarted").exists()
        if restarted_at is None and (control / "restarted").exists():
            restarted_at = now
        uid = next_uid
        next_uid += 1
        pushed = timed("push", lambda: features.push_rows([uid], deadline))
        if pushed:
            acked.append(uid)
            if len(acked) == args.warm and not (control / "warm").exists():
                (control / "warm").touch()
        probe = acked[-1] if acked else uid
        read = timed("read", lambda: features.read([probe], deadline))
        if down and not (pushed and read):
            errors_while_down += 1
        if restarted_at is not None:
            streak = streak + 1 if (pushed and read) else 0
            if streak >= args.recovered_after:
                recovered_at = time.monotonic()
                break
            if time.monotonic() - restarted_at > args.recover_s:
                fail(f"calls did not succeed again within {args.recover_s} s of Redis restarting: {codes}")
        if not (pushed and read):
            time.sleep(0.005)

    if slow:
        fail(f"{len(slow)} call(s) took longer than the deadline + slack ({limit:.3f} s): {slow[:10]}")
    if errors_while_down == 0:
        fail(f"no call failed while Redis was down: the outage was not observed ({codes})")
    bad = features.missing(acked)
    if bad:
        fail(f"{len(bad)} of {len(acked)} acknowledged pushes are missing or wrong after the restart: {bad[:5]}")
    print(
        json.dumps(
            {
                "acked": len(acked),
                "calls": codes,
                "failed_while_down": errors_while_down,
                "worst_call_s": round(worst, 3),
                "recovered_s": round(recovered_at - restarted_at, 2),
            },
            sort_keys=True,
        ),
        flush=True,
    )


# --- push: rows from several threads until the server dies.


def run_push(args):
    api = Api(args.addr)
    features = Features(api)
    control = pathlib.Path(args.control)
    lock = threading.Lock()
    acked = []
    problems = []
    died = []
    counter = iter(range(args.first_id, args.first_id + 10_000_000, args.batch))
    started = time.monotonic()

    def worker():
        while time.monotonic() - started < args.max_seconds:
            with lock:
                first = next(counter)
            uids = list(range(first, first + args.batch))
            try:
                features.push_rows(uids, timeout=10.0)
            except grpc.RpcError as e:
                code = code_name(e)
                with lock:
                    if code == "UNAVAILABLE":
                        died.append(uids)
                    else:
                        problems.append((uids, code, e.details()))
                return
            with lock:
                acked.extend(uids)
                if len(acked) >= args.warm and not (control / "warm").exists():
                    (control / "warm").touch()

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pathlib.Path(args.acked).write_text(json.dumps(sorted(acked)))
    if problems:
        fail(f"pushes failed with something other than UNAVAILABLE: {problems[:5]}")
    if not died:
        fail(f"the server answered for {args.max_seconds} s: it was never killed")
    print(json.dumps({"acked": len(acked), "in_flight_at_kill": len(died)}), flush=True)


def run_verify(args):
    api = Api(args.addr)
    acked = json.loads(pathlib.Path(args.acked).read_text())
    bad = Features(api).missing(acked)
    if bad:
        fail(f"{len(bad)} of {len(acked)} acknowledged rows are missing or wrong after the restart: {bad[:5]}")
    print(json.dumps({"verified": len(acked)}), flush=True)


# --- sigterm: graceful shutdown under load.


def process_gone(pid):
    """True once `pid` has exited (a zombie waiting for its parent counts as exited)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class Stream:
    """A ModelStreamInfer call whose requests are sent one by one; a thread collects what
    comes back (answers, then the final status)."""

    def __init__(self, method):
        self.requests = queue.Queue()
        self.answers = queue.Queue()
        self.end = None
        responses = method(iter(self.requests.get, None))

        def read():
            try:
                for r in responses:
                    self.answers.put(("answer", r))
                self.answers.put(("end", "OK", ""))
            except grpc.RpcError as e:
                self.answers.put(("end", code_name(e), e.details()))

        threading.Thread(target=read, daemon=True).start()

    def send(self, request):
        self.requests.put(request)

    def receive(self, timeout):
        """The next answer; raises if the stream ended or nothing came within `timeout`."""
        try:
            item = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no stream answer within {timeout} s") from None
        if item[0] == "end":
            self.end = item[1:]
            raise RuntimeError(f"the stream ended {item[1]} {item[2]!r}")
        if item[1].error_message:
            raise RuntimeError(f"error answer: {item[1].error_message}")
        return item[1]

    def close(self, timeout=30):
        """Half-closes the stream; returns its final status (code name, details)."""
        self.requests.put(None)
        if self.end:
            return self.end
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.answers.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item[0] == "end":
                return item[1], item[2]
        return "HANG", f"no end within {timeout} s"


def run_sigterm(args):
    api = Api(args.addr)
    infer = api.method("inference.GRPCInferenceService", "ModelInfer")
    stream_infer = api.method("inference.GRPCInferenceService", "ModelStreamInfer")
    live = api.method("inference.GRPCInferenceService", "ServerLive")
    request = api.message("inference.ModelInferRequest")

    small = request(model_name="fraud_logreg", id="small")
    t = small.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    t.contents.fp32_contents.extend([0.5] * 8)
    # A slow call: the image embedder on a batch of images (under the 4 MiB message limit).
    n = args.images
    slow = request(model_name="image_embedder", id="slow")
    slow.inputs.add(name="image", datatype="FP32", shape=[n, 3, 224, 224])
    slow.raw_input_contents.append(bytes(4 * n * 3 * 224 * 224))

    # Two streams open before the signal: one carries a slow request in flight at the signal,
    # one is left idle and open (the grace period must bound how long it can keep the process
    # alive).
    finishing = Stream(stream_infer)
    finishing.send(small)
    finishing.receive(30)
    lingering = Stream(stream_infer)
    lingering.send(small)
    lingering.receive(30)

    lock = threading.Lock()
    calls = []  # (start, end, code, detail)
    in_flight = {}
    stop = threading.Event()

    def worker(i):
        while not stop.is_set():
            t0 = time.monotonic()
            with lock:
                in_flight[i] = t0
            try:
                infer(slow, timeout=60)
                code, detail = "OK", ""
            except grpc.RpcError as e:
                code, detail = code_name(e), e.details()
            t1 = time.monotonic()
            with lock:
                del in_flight[i]
                calls.append((t0, t1, code, detail))
            if code != "OK":
                return

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.threads)]
    for w in workers:
        w.start()
    # Once a unary call has been answered (the model is warm), a slow request goes on the
    # stream; the signal comes when it and a unary call have been in flight long enough to be
    # surely running on the server.
    waited = time.monotonic()
    while True:
        with lock:
            warm = any(c[2] == "OK" for c in calls)
        if warm:
            break
        if time.monotonic() - waited > 120:
            fail("no ModelInfer call was answered within 120 s")
        time.sleep(0.01)
    finishing.send(slow)
    stream_sent = time.monotonic()
    while True:
        now = time.monotonic()
        if not finishing.answers.empty():
            # The stream's request finished while the unary calls were still young (it may
            # run between them): take its answer and put another on the stream.
            try:
                finishing.receive(1)
            except RuntimeError as e:
                fail(f"the stream's slow request failed before the signal: {e}")
            finishing.send(slow)
            stream_sent = now
        with lock:
            oldest = min(in_flight.values(), default=None)
        if now - stream_sent >= args.in_flight_s and oldest is not None and now - oldest >= args.in_flight_s:
            break
        if now - waited > 120:
            fail(f"no ModelInfer call stayed in flight {args.in_flight_s} s: the slow call is too fast")
        time.sleep(0.01)
    if not finishing.answers.empty():
        fail("the stream's slow request was answered before the signal: it is too fast to test")
    signalled = time.monotonic()
    os.kill(args.pid, getattr(signal, f"SIG{args.signal}"))

    # New connections: refused promptly once the server has taken the signal, never hung.
    refused_after = None
    while time.monotonic() - signalled < args.refuse_within_s:
        fresh = grpc.insecure_channel(args.addr, options=[("grpc.use_local_subchannel_pool", 1)])
        t0 = time.monotonic()
        try:
            live(api.message("inference.ServerLiveRequest")(), timeout=2.0, wait_for_ready=False)
            code = "OK"
        except grpc.RpcError as e:
            code = code_name(e)
        took = time.monotonic() - t0
        fresh.close()
        if code == "UNAVAILABLE":
            if took > 1.0:
                fail(f"a new connection after SIGTERM took {took:.2f} s to be refused")
            refused_after = time.monotonic() - signalled
            break
        if code != "OK":
            fail(f"a new connection after SIGTERM got {code} instead of being refused")
        time.sleep(0.05)
    if refused_after is None:
        fail(f"new connections were still accepted {args.refuse_within_s} s after SIGTERM")

    # The request on the stream at the signal is answered, or, if the server had not taken it
    # yet (a 2.4 MB message arrives in flow-control windows), refused with the server's own
    # status; then the stream ends with a status (OK, or UNAVAILABLE if the server closes
    # streams as it drains). A reset or a dropped connection fails.
    transport = ("Socket closed", "reset", "Stream removed", "Connection")
    try:
        finishing.receive(60)
        stream_request = "answered"
        stream_end = finishing.close()
    except TimeoutError as e:
        fail(f"the stream request in flight at SIGTERM got nothing: {e}")
    except RuntimeError as e:
        stream_request = "refused"
        stream_end = finishing.close()
        if stream_end[0] != "UNAVAILABLE":
            fail(f"the stream request in flight at SIGTERM was neither answered nor refused UNAVAILABLE: {e}")
    if stream_end[0] not in ("OK", "UNAVAILABLE") or any(t in stream_end[1] for t in transport):
        fail(f"a stream open at SIGTERM ended {stream_end} instead of a clean OK or UNAVAILABLE status")

    stop.set()
    for w in workers:
        w.join(120)
    with lock:
        record = list(calls)
    lost = [c for c in record if c[0] <= signalled - args.in_flight_s and c[1] >= signalled and c[2] != "OK"]
    if lost:
        fail(f"{len(lost)} call(s) in flight at SIGTERM did not finish OK: {[(c[2], c[3]) for c in lost]}")
    finished_in_flight = [c for c in record if c[0] <= signalled - args.in_flight_s and c[1] >= signalled]
    if not finished_in_flight:
        fail("no call was in flight at SIGTERM: nothing was tested")
    odd = [c for c in record if c[2] not in ("OK", "UNAVAILABLE")]
    if odd:
        fail(f"calls around SIGTERM ended {[(c[2], c[3]) for c in odd]}; expected OK, or UNAVAILABLE once refused")

    # The process exits once the lingering stream is cut at the end of the grace period.
    while not process_gone(args.pid):
        if time.monotonic() - signalled > args.grace_s + args.exit_slack_s:
            fail(f"the server was still running {args.grace_s + args.exit_slack_s} s after SIGTERM (grace {args.grace_s} s)")
        time.sleep(0.02)
    exited_after = time.monotonic() - signalled
    lingering_status = lingering.close(5)[0]
    print(
        json.dumps(
            {
                "in_flight_finished_ok": len(finished_in_flight),
                "slowest_call_s": round(max(c[1] - c[0] for c in record), 2),
                "calls": len(record),
                "refused_after_s": round(refused_after, 2),
                "exited_after_s": round(exited_after, 2),
                "lingering_stream": lingering_status,
                "stream_request": stream_request,
                "stream_end": " ".join(stream_end)[:80],
            },
            sort_keys=True,
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)

    p = sub.add_parser("redis")
    p.add_argument("--addr", required=True)
    p.add_argument("--control", required=True, help="directory of the script's marker files")
    p.add_argument("--deadline-ms", type=int, default=200)
    p.add_argument("--slack-ms", type=int, default=2000)
    p.add_argument("--first-id", type=int, default=50_000_000)
    p.add_argument("--warm", type=int, default=50, help="acknowledged pushes before Redis is killed")
    p.add_argument("--recovered-after", type=int, default=10, help="consecutive OK rounds that end the run")
    p.add_argument("--recover-s", type=float, default=30.0)
    p.add_argument("--max-seconds", type=float, default=90.0)

    p = sub.add_parser("push")
    p.add_argument("--addr", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--acked", required=True, help="file the acknowledged ids are written to")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--first-id", type=int, default=60_000_000)
    p.add_argument("--warm", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=60.0)

    p = sub.add_parser("verify")
    p.add_argument("--addr", required=True)
    p.add_argument("--acked", required=True)

    p = sub.add_parser("sigterm")
    p.add_argument("--addr", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--grace-s", type=float, required=True)
    p.add_argument("--exit-slack-s", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=3)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--in-flight-s", type=float, default=0.2)
    p.add_argument("--refuse-within-s", type=float, default=5.0)
    p.add_argument("--signal", default="TERM", help="KILL or INT show what the checks catch")

    args = parser.parse_args()
    {"redis": run_redis, "push": run_push, "verify": run_verify, "sigterm": run_sigterm}[args.mode](args)


if __name__ == "__main__":
    main()
