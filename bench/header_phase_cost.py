"""Header-phase cost, by instruction count: run under callgrind with N=0 and N>0, divide the difference by N."""
import os, sys, tempfile
from pathlib import Path

mode, n = sys.argv[1], int(sys.argv[2])
new = os.environ.get("TREE") == "new"
tmp = Path(tempfile.mkdtemp())
from tidegate.config import load_settings
from tidegate.auth import KeyStore
from tidegate.gateway import Gateway

env = {"TIDEGATE_RATE_PER_DEVICE": "1e9", "TIDEGATE_BURST_PER_DEVICE": "1e9"}
if mode == "shed":
    env |= {"TIDEGATE_ADMISSION_INITIAL_LIMIT": "2", "TIDEGATE_ADMISSION_MIN_LIMIT": "2", "TIDEGATE_ADMISSION_MAX_LIMIT": "2"}
settings = load_settings(data_dir=tmp, env=env)
key = KeyStore(settings.keys_file).add("dev-1")
gw = Gateway(settings)
gw.ready = True
edge = gw.edge
route = gw.routes["/api/v1/ingest"]
prio = [(b"x-priority", b"low")] if mode == "shed" else []
raw = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*"),
       (b"content-type", b"application/json"), (b"content-length", b"180"), (b"x-device-token", key.encode()), *prio]

if new:
    from tidegate.ingest import read_headers
    DICT = bool(os.environ.get("DICT"))
    adm = gw.admission
    if mode == "shed":  # one big low request holds the low share
        held = adm.decide([(b"x-priority", b"low"), (b"content-length", b"100000"), (b"x-device-token", key.encode())], "medium", 0)
        assert held[3] is None
    def once():
        ticket, device, priority, refusal = adm.decide(raw, route.priority, gw.in_flight_records)
        if refusal is not None:
            status, body, head = refusal
        adm.done(ticket)
        if mode == "admit" and DICT:
            read_headers(raw)
        assert (refusal is None) == (mode == "admit")
else:
    from tidegate.ingest import WANTED_HEADERS, Answer
    from tidegate.admission import request_cost
    if mode == "shed":
        assert gw.admission.try_acquire("low", 30.0)
    def once():
        headers = {}
        for name, value in raw:
            if name in WANTED_HEADERS:
                text = value.decode("latin-1")
                headers[name] = f"{headers[name]},{text}" if name in headers else text
        priority = headers.get(b"x-priority", route.priority).strip().lower()
        cost = request_cost(headers.get(b"content-length"), headers.get(b"content-encoding"))
        admitted = gw.admission.try_acquire(priority, cost)
        if not admitted:
            edge.metrics.shed.inc((priority,))
            answer = Answer(503, edge._shed_bodies.get(priority, edge._shed_bodies["low"]),
                            [(b"retry-after", str(gw.admission.retry_after()).encode())],
                            content_type=b"application/problem+json")
            answer.headers.append((b"content-type", answer.content_type))
            answer.headers.append((b"content-length", str(len(answer.body)).encode()))
        else:
            edge._admit(route, headers)
            gw.admission.release(priority, cost, 0.001)
        assert admitted == (mode == "admit")

once()
for _ in range(n):
    once()
