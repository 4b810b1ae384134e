"""Client ceiling: how many streamed requests/s the load generator itself sustains.

Starts a minimal OpenAI-compatible streaming endpoint (aiohttp, in its own process, answers every
/v1/completions request at once with N_TOKENS SSE token events, a usage event and [DONE]) and drives it
with hpcbench's client and with vLLM's `bench serve` client (its Python API), same concurrency, same
number of requests, alternating runs. Prints requests/s and streamed tokens/s of both and the ratio.

    python benchmarks/client_ceiling.py [--requests 20000] [--concurrency 64] [--rounds 2]

vLLM's client needs a tokenizer to make its random prompts: --tokenizer DIR, else the tiny model is made
in a temporary folder.
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

N_TOKENS = 64


def _payload(n_tokens: int) -> bytes:
    events = []
    for i in range(n_tokens):
        chunk = {"id": "cmpl-ceiling", "object": "text_completion", "created": 0, "model": "ceiling",
                 "choices": [{"index": 0, "text": f" t{i}", "logprobs": None, "finish_reason":
                              "length" if i == n_tokens - 1 else None, "stop_reason": None}],
                 "usage": None}
        events.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    usage = {"id": "cmpl-ceiling", "object": "text_completion", "created": 0, "model": "ceiling",
             "choices": [], "usage": {"prompt_tokens": 8, "total_tokens": 8 + n_tokens,
                                      "completion_tokens": n_tokens}}
    events.append(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def serve(port: int, n_tokens: int) -> None:
    """The endpoint: read the request, stream the prepared events in one chunked write."""
    from aiohttp import web

    body = _payload(n_tokens)

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "ceiling", "object": "model"}]})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop_factory=loop_factory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"endpoint {url} not ready in {timeout} s")


def run_hpcbench(url: str, n: int, concurrency: int) -> tuple[float, float, int]:
    """(requests/s, tokens/s, failed) of hpcbench's client."""
    from hpcbench.bench import client

    reqs = [client.Request(i, client.completions_body("ceiling", [1 + i % 7] * 8, N_TOKENS, True), 8, N_TOKENS)
            for i in range(n)]
    out = client.run(client.run_requests([url], "/v1/completions", reqs, concurrency=concurrency))
    ok = [r for r in out.results if r.ok]
    tokens = sum(r.token_events for r in ok)
    # Same window as vLLM's figure: first send -> last completion.
    return len(ok) / out.duration, tokens / out.duration, len(reqs) - len(ok)


def run_vllm(url: str, n: int, concurrency: int, tokenizer: str) -> tuple[float, float, int]:
    """(requests/s, tokens/s, failed) of vLLM's bench serve client, from its saved result."""
    import argparse as ap

    from vllm.benchmarks.serve import add_cli_args, main

    with tempfile.TemporaryDirectory() as tmp:
        parser = ap.ArgumentParser()
        add_cli_args(parser)
        args = parser.parse_args([
            "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", "ceiling",
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", "8",
            "--random-output-len", str(N_TOKENS), "--num-prompts", str(n), "--max-concurrency",
            str(concurrency), "--ignore-eos", "--disable-tqdm", "--save-result", "--result-dir", tmp,
            "--result-filename", "r.json"])
        main(args)
        res = json.loads((Path(tmp) / "r.json").read_text())
    # vLLM's own duration: from its first send to its last completion.
    return res["request_throughput"], res["output_throughput"], n - res["completed"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each client; best kept")
    ap.add_argument("--tokenizer", help="tokenizer dir for vLLM's random prompts (default: the tiny model)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, N_TOKENS)
        return 0

    tokenizer = args.tokenizer
    tmp = None
    if not tokenizer:
        from hpcbench.runtime.tiny_model import make_tiny_model

        tmp = tempfile.TemporaryDirectory()
        tokenizer = str(make_tiny_model(Path(tmp.name) / "tiny"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(port)])
    try:
        wait_ready(url)
        best = {"hpcbench": (0.0, 0.0, 0), "vllm": (0.0, 0.0, 0)}
        for r in range(args.rounds):
            for name in ("vllm", "hpcbench"):
                got = (run_hpcbench(url, args.requests, args.concurrency) if name == "hpcbench"
                       else run_vllm(url, args.requests, args.concurrency, tokenizer))
                print(f"round {r + 1} {name:9s} {got[0]:9.0f} requests/s {got[1]:11.0f} tokens/s "
                      f"failed {got[2]}", flush=True)
                if got[0] > best[name][0]:
                    best[name] = got
        h, v = best["hpcbench"], best["vllm"]
        print(f"\nconcurrency {args.concurrency}, {args.requests} requests of {N_TOKENS} streamed tokens")
        print(f"vLLM bench client : {v[0]:9.0f} requests/s {v[1]:11.0f} tokens/s")
        print(f"hpcbench client   : {h[0]:9.0f} requests/s {h[1]:11.0f} tokens/s")
        print(f"ratio hpcbench/vLLM: {h[0] / v[0]:.2f}x requests/s")
        return 0 if h[2] == 0 and v[2] == 0 else 1
    finally:
        server.terminate()
        server.wait(10)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
