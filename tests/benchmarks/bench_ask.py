"""How many requests/s the stress runner drives, next to wrk on the same endpoint.

Starts a trivial FastAPI app under uvicorn on 127.0.0.1 (the shape of the real service,
minus the model), then, in the same run and against the same endpoint:

1. ``wrk`` (POST, same JSON body, same connection count), the ceiling;
2. ``mpsctl ask QUESTION -c C --duration D --json``, as an operator runs it (memory
   sampling included);

and prints both rates and their ratio (target >= 0.5). Each measurement is bounded by
``--duration``; the whole script by a few times that.

    python tests/benchmarks/bench_ask.py                # 5 s each, 8 connections
    python tests/benchmarks/bench_ask.py --duration 10 --concurrency 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BODY = json.dumps({"question": "工商银行"}, ensure_ascii=False)


def serve(port: int) -> None:
    """The trivial endpoint (run in a child process so it has its own interpreter)."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "model_loaded": True}

    @app.post("/api/v1/query")
    async def query(payload: dict[str, object]) -> dict[str, object]:
        return {"answer": "ok", "model": "none", "device": "cpu", "tokens": 1}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not come up")


def run_wrk(url: str, concurrency: int, duration: int, script: Path) -> float:
    threads = min(concurrency, os.cpu_count() or 1)
    argv = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "-s", str(script),
            url + "/api/v1/query"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if match is None or "Non-2xx" in out.stdout:
        raise SystemExit(f"wrk output not understood:\n{out.stdout}")
    return float(match.group(1))


def run_mpsctl(url: str, concurrency: int, duration: int) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "MPSCTL_SERVICE_URL": url}
    argv = [sys.executable, "-m", "mpsctl", "ask", "工商银行", "-c", str(concurrency),
            "--duration", f"{duration}s", "--json"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration + 30)
    doc = json.loads(out.stdout)
    if out.returncode != 0 or doc["errors"]:
        raise SystemExit(f"mpsctl ask failed ({out.returncode}): {doc['errors']} {out.stderr}")
    return float(doc["requests_per_s"]), doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="alternate wrk/mpsctl this often")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (apt-get install wrk)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_up(url)
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "post.lua"
            # a Lua string literal; raw UTF-8, since LuaJIT has no \\u escapes
            body = json.dumps(BODY, ensure_ascii=False)
            script.write_text(
                'wrk.method = "POST"\n'
                f"wrk.body = {body}\n"
                'wrk.headers["Content-Type"] = "application/json"\n',
                encoding="utf-8",
            )
            wrk_rates, ours = [], []
            for _ in range(args.rounds):
                wrk_rates.append(run_wrk(url, args.concurrency, args.duration, script))
                rate, doc = run_mpsctl(url, args.concurrency, args.duration)
                ours.append(rate)
    finally:
        server.terminate()
        server.wait(10)
    # Each pair ran back to back: on a shared machine their ratio is steadier than either rate.
    ratios = [ours_i / wrk_i for ours_i, wrk_i in zip(ours, wrk_rates, strict=True)]
    latency = doc["latency"]
    assert isinstance(latency, dict)
    print(f"endpoint: trivial FastAPI app under uvicorn, {url}/api/v1/query")
    print(f"connections: {args.concurrency}, {args.duration} s each, {args.rounds} round(s)")
    for i, (w, o, r) in enumerate(zip(wrk_rates, ours, ratios, strict=True), 1):
        print(f"round {i}: wrk {w:8.1f}/s   mpsctl ask {o:8.1f}/s   ratio {r:.2f}")
    wrk_median, ours_median = statistics.median(wrk_rates), statistics.median(ours)
    print(f"median: wrk {wrk_median:.1f}/s, mpsctl ask {ours_median:.1f}/s")
    print(f"last mpsctl run: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms")
    print(f"ratio mpsctl/wrk (median of rounds): {statistics.median(ratios):.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
