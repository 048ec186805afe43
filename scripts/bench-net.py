#!/usr/bin/env python3
"""Network benchmarks of docs/BENCHMARKS.md, on loopback with release binaries.

  cargo build --release -p blyan && cargo build --release -p blyan-net --example tcp_copy  # two commands: --example narrows a build to examples
  python3 scripts/bench-net.py

1. Join: a fresh data directory syncs the 61.5 MB genesis from 1 peer and from 2 peers
   (`blyan join --json`), three runs each, beside a raw TCP copy of the same payload bytes.
2. Follow latency: node 1 anchors its ledger every second while chats make postings; nodes
   2 and 3 follow it (`blyan up --peer`); for each new ledger block, the delay between node 1
   showing it and each follower showing it (polled every 5 ms).
"""

import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "blyan")
TCP = os.path.join(ROOT, "target", "release", "examples", "tcp_copy")
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
            ds.sort()
            p99 = ds[min(len(ds) - 1, int(round(0.99 * (len(ds) - 1))))]
            print(f"follow latency to node {port - 8610}: n={len(ds)} p50 {statistics.median(ds):.0f} ms, "
                  f"p99 {p99:.0f} ms, max {ds[-1]:.0f} ms")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
