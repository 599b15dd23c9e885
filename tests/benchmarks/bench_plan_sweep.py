"""The plan's predicted memory next to the measured peak, per concurrency, on the 0.5b demo.

Starts the reference service (``mpsctl serve``) on the 0.5b demo checkpoint (Qwen2.5-0.5B's
layer shapes, random weights, 384-token vocabulary; built once, ~22 s), sends one warm-up
query, then runs ``mpsctl ask QUESTION --sweep 1,2,4 --json`` and, for each level,
``mpsctl plan --model DIR --max-concurrent C`` with the same prompt and new-token counts
(no --ram: the plan reads the running service's memory report).

What "measured" is: on CPU (this machine) the service's process RSS, sampled by the sweep
(``tree_rss_bytes``; the macOS footprint where there is one). It includes allocator
caching and glibc's per-thread arenas, which the plan does not model; on MPS the figure to
compare is ``accel_held_bytes`` (Metal driver memory), printed too when present.

    python tests/benchmarks/bench_plan_sweep.py                  # new tokens 64, 4 requests/level
    python tests/benchmarks/bench_plan_sweep.py --max-new-tokens 128 --requests 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

QUESTION = "工商银行"
LEVELS = (1, 2, 4)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mpsctl(
    *args: str, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpsctl", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)  # fmt: skip


def prompt_tokens(model_dir: Path) -> int:
    """Tokens the service feeds the model for QUESTION (its chat template included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}],
                                        add_generation_prompt=True, return_dict=True)  # fmt: skip
    return len(ids["input_ids"])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                return json.load(reply)  # type: ignore[no-any-return]
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the service did not become healthy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "mpsctl-demo-0.5b"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="requests per level")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSCTL_")}
    # four queries at once on a shared CPU take longer than the default 60 s per query
    env.update(MPSCTL_HOME=str(home), MPSCTL_TOKEN="bench-token",
               MPSCTL_SERVICE_REQUEST_TIMEOUT="600")  # fmt: skip
    if not (args.model_dir / "mpsctl-demo.json").is_file():
        started = time.perf_counter()
        done = mpsctl("demo-model", str(args.model_dir), "--size", "0.5b", "--force", env=env)
        if done.returncode:
            raise SystemExit(done.stderr)
        print(f"built the 0.5b demo in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env["MPSCTL_SERVICE_URL"] = url
    log = (home / "service.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "serve", "--model", str(args.model_dir), "--port",
         str(port), "--max-concurrent", str(max(LEVELS)), "--max-new-tokens",
         str(args.max_new_tokens), "--cleanup-interval", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        health = wait_healthy(url, proc)
        device = health.get("device", "cpu")
        warm = mpsctl("ask", QUESTION, "--max-new-tokens", str(args.max_new_tokens), env=env)
        if warm.returncode:
            raise SystemExit(f"warm-up query failed: {warm.stderr}")
        idle = wait_healthy(url, proc)["memory"]["rss_bytes"]
        sweep = mpsctl("ask", QUESTION, "-n", str(args.requests), "--max-new-tokens",
                       str(args.max_new_tokens), "--sweep", ",".join(map(str, LEVELS)), "--json",
                       env=env)  # fmt: skip
        if not sweep.stdout:
            raise SystemExit(f"sweep failed: {sweep.stderr}")
        levels = json.loads(sweep.stdout)["levels"]
        tokens = prompt_tokens(args.model_dir)
        print(f"device {device}; prompt {tokens} tokens; max_new_tokens {args.max_new_tokens}; "
              f"idle service RSS after a warm-up query {idle:,} B")  # fmt: skip
        print("measured = the service's RSS peak during the level (CPU); growth = peak - idle")
        header = ("conc", "predicted total", "measured peak", "ratio", "tensor growth",
                  "measured growth", "ratio", "counted/measured")  # fmt: skip
        print("{:>4} {:>16} {:>16} {:>6} {:>16} {:>16} {:>6} {:>16}".format(*header))
        for level in levels:
            conc = level["concurrency"]
            plan = mpsctl("plan", "--model", str(args.model_dir), "--max-concurrent", str(conc),
                          "--prompt-tokens", str(tokens), "--max-new-tokens",
                          str(args.max_new_tokens), "--json", env=env)  # fmt: skip
            doc = json.loads(plan.stdout)
            memory = level["memory"]
            measured = memory["tree_rss_bytes"]["peak"] or memory["reported_rss_bytes"]["peak"]
            # tensors: the queries' KV cache and peak; counted: x the plan's CPU growth factor
            growth = conc * doc["per_query_bytes"]
            counted = conc * doc["per_query_counted_bytes"]
            measured_growth = measured - idle
            ratio = growth / measured_growth if measured_growth > 0 else float("nan")
            counted_ratio = counted / measured_growth if measured_growth > 0 else float("nan")
            print(f"{conc:>4} {doc['total_bytes']:>16,} {measured:>16,} "
                  f"{doc['total_bytes'] / measured:>6.2f} {growth:>16,} {measured_growth:>16,} "
                  f"{ratio:>6.2f} {counted_ratio:>16.2f}")  # fmt: skip
            if memory["accel_held_bytes"]["peak"] is not None:
                print(f"     accelerator held peak {memory['accel_held_bytes']['peak']:,} B")
            print(f"     ok {level['ok']}/{level['total']} errors {level['errors'] or 'none'}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
