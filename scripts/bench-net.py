#!/usr/bin/env python3
"""Network benchmarks of docs/BENCHMARKS.md, on loopback with release binaries.

  cargo build --release -p blyan && cargo build --release -p blyan-net --example tcp_copy  # two commands: --example narrows a build to examples
  python3 scripts/bench-net.py

1. Join: a fresh data directory syncs the 61.5 MB genesis from 1 peer and from 2 peers
   (`blyan join --json`), three runs each, beside a raw TCP copy of the same payload bytes,
   into memory and into one fsynced file per payload.
2. Follow latency: node 1 anchors its ledger every second while chats make postings; nodes
   2 and 3 follow it (`blyan up --peer`); for each new ledger block, the delay between node 1
   showing it and each follower showing it (polled every 5 ms).
3. Push latency over the p2p network: on a second network, node 2 is admitted and both nodes
   listen on p2p (`--p2p-listen`); node 1 writes admission blocks (`POST /net/admit`, which
   answers once the block is stored) and node 2 is polled every millisecond for each one.
"""

import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PROFILE = os.environ.get("BLYAN_BENCH_PROFILE", "release")  # "debug" for a quick look only
BIN = os.path.join(TARGET, PROFILE, "blyan")
TCP = os.path.join(TARGET, PROFILE, "examples", "tcp_copy")
ENV = dict(os.environ, BLYAN_KEY_PASSPHRASE="bench", RUST_LOG="warn")


def blyan(data_dir, *args):
    out = subprocess.run([BIN, "--data-dir", data_dir, *args], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"blyan {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def start(data_dir, port, *args):
    proc = subprocess.Popen(
        [BIN, "--data-dir", data_dir, "up", "--listen", f"127.0.0.1:{port}", *args],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("web UI"):
            return proc
    raise SystemExit(f"node on port {port} did not start")


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.load(r)


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def found(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def percentiles(ds):
    ds = sorted(ds)
    p99 = ds[min(len(ds) - 1, int(round(0.99 * (len(ds) - 1))))]
    return f"n={len(ds)} p50 {statistics.median(ds):.1f} ms, p99 {p99:.1f} ms, max {ds[-1]:.1f} ms"


def push_latency(tmp, procs):
    q1, q2 = os.path.join(tmp, "p2p-1"), os.path.join(tmp, "p2p-2")
    blyan(q1, "init", "--random-weights")
    procs.append(start(q1, 8621, "--p2p-listen", "127.0.0.1:8631"))
    network = get(8621, "/node")["node"]["network"]
    k1 = key_of(q1)
    c1 = f"{k1}@127.0.0.1:8621"
    blyan(q2, "join", "--network", network, "--bootstrap", c1)
    k2 = key_of(q2)
    post(8621, "/net/admit", {"key": k2, "role": "validator"})
    procs.append(start(q2, 8622, "--peer", c1, "--p2p-listen", "127.0.0.1:8632"))
    deadline = time.time() + 60
    while not any(p["transport"] == "p2p" and p["key"] == k1 and p["silent_for_ms"] is not None
                  for p in get(8622, "/net/peers")["peers"]):
        if time.time() > deadline:
            raise SystemExit("node 2 never connected to node 1 over p2p")
        time.sleep(0.1)
    delays = []
    for i in range(40):
        block = post(8621, "/net/admit", {"key": k2, "role": "host", "admitted": i % 2 == 0})["block"]
        t0 = time.perf_counter()
        while not found(8622, f"/chain/blocks/{block}"):
            if time.perf_counter() - t0 > 10:
                raise SystemExit("a block never reached node 2")
            time.sleep(0.001)
        delays.append((time.perf_counter() - t0) * 1e3)
        time.sleep(0.05)
    print(f"p2p push latency to node 2: {percentiles(delays)}")
    time.sleep(1.5)
    by = {p["transport"]: p["blocks_from"] for p in get(8622, "/net/peers")["peers"] if p["key"] == k1}
    print(f"blocks node 2 stored from node 1: {by}")


def key_of(data_dir):
    return json.loads(blyan(data_dir, "net", "id", "--json"))["key"]


def main():
    tmp = tempfile.mkdtemp(prefix="blyan-bench-net-")
    n1, n2, n3 = (os.path.join(tmp, d) for d in ("n1", "n2", "n3"))
    blyan(n1, "init", "--random-weights")
    procs = [start(n1, 8611, "--anchor-interval-s", "1")]
    network = get(8611, "/node")["node"]["network"]
    b1 = f"{key_of(n1)}@127.0.0.1:8611"
    blyan(n2, "join", "--network", network, "--bootstrap", b1)
    procs.append(start(n2, 8612, "--peer", b1))
    b2 = f"{key_of(n2)}@127.0.0.1:8612"
    try:
        payload = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, files in os.walk(os.path.join(n1, "chain", "payloads")) for f in files)
        print(f"genesis payload bytes: {payload}")
        for label, boots in (("1 peer", [b1]), ("2 peers", [b1, b2])):
            runs = []
            for i in range(3):
                d = os.path.join(tmp, f"join-{len(boots)}-{i}")
                args = ["join", "--network", network, "--json"]
                for b in boots:
                    args += ["--bootstrap", b]
                t = time.perf_counter()
                report = json.loads(blyan(d, *args))
                wall = time.perf_counter() - t
                runs.append((wall, report["bytes"] / 1e6 / wall, report["blocks"]))
            print(f"join from {label}: " + "; ".join(
                f"{w:.2f} s wall, {mb:.1f} MB/s, {b} blocks" for w, mb, b in runs))
        tcp = subprocess.run([TCP, os.path.join(n1, "chain", "payloads")], capture_output=True, text=True)
        print(tcp.stdout.strip() or tcp.stderr.strip())

        blyan(n3, "join", "--network", network, "--bootstrap", b1)
        procs.append(start(n3, 8613, "--peer", b1))
        blyan_n3_ready = time.time() + 60
        while get(8613, "/chain/blocks")["total"] < get(8611, "/chain/blocks")["total"]:
            if time.time() > blyan_n3_ready:
                raise SystemExit("node 3 never caught up")
            time.sleep(0.1)
        delays = {8612: [], 8613: []}
        seen = get(8611, "/chain/blocks?chain=ledger")["total"]
        body = json.dumps({"prompt": "In the beginning", "max_tokens": 1}).encode()
        for _ in range(30):
            req = urllib.request.Request("http://127.0.0.1:8611/v1/completions", data=body,
                                         headers={"content-type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
            deadline = time.time() + 10
            while True:
                total = get(8611, "/chain/blocks?chain=ledger")["total"]
                if total > seen:
                    break
                if time.time() > deadline:
                    raise SystemExit("node 1 anchored nothing")
                time.sleep(0.005)
            t0 = time.perf_counter()
            seen = total
            pending = {8612, 8613}
            while pending:
                for port in list(pending):
                    if get(port, "/chain/blocks?chain=ledger")["total"] >= total:
                        delays[port].append((time.perf_counter() - t0) * 1e3)
                        pending.discard(port)
                time.sleep(0.005)
        for port, ds in delays.items():
            print(f"follow latency to node {port - 8610}: {percentiles(ds)}")
        push_latency(tmp, procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
