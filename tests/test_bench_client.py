"""The load generator against small real HTTP endpoints (aiohttp servers in a thread).

The endpoints answer like vLLM's OpenAI server, plus the awkward cases a real network gives: events
cut across reads, spaced JSON, CRLF, an error mid-stream, HTTP 500, a hang, a closed port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from hpcbench.bench import client


@dataclass
class Endpoint:
    url: str
    hits: list[str] = field(default_factory=list)


def _event(obj: dict, spaced: bool) -> bytes:
    text = json.dumps(obj) if spaced else json.dumps(obj, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


async def _completions(request) -> object:
    from aiohttp import web

    body = await request.json()
    ep: Endpoint = request.app["endpoint"]
    mode = body["model"]
    ep.hits.append(mode)
    n, prompt = body["max_tokens"], body["prompt"]
    plen = len(prompt) if isinstance(prompt, list) else len(prompt.split())
    usage = {"prompt_tokens": plen, "completion_tokens": n, "total_tokens": plen + n}
    if mode == "error500":
        return web.Response(status=500, text="engine dead")
    if mode == "slow":
        await asyncio.sleep(30)
    if not body.get("stream"):
        return web.json_response({"choices": [{"index": 0, "text": "x" * n}], "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    spaced = mode == "spaced"
    events = [_event({"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}], "usage": None}, spaced)
              for i in range(n)]
    if mode == "midstream":
        events = events[:2] + [_event({"error": {"message": "KV cache exhausted", "code": 500}}, spaced)]
    else:
        events.append(_event({"choices": [], "usage": usage}, spaced))
    events.append(b"data: [DONE]\n\n")
    data = b"".join(events)
    if mode == "unterminated":  # no usage, no [DONE], and the last token event lacks its blank line
        data = b"".join(events[:n])[:-2]
        await resp.write(data)
        await resp.write_eof()
        return resp
    if mode == "crlf":
        data = data.replace(b"\n", b"\r\n")
    if mode == "split":  # 7-byte writes: events arrive cut at arbitrary places
        for k in range(0, len(data), 7):
            await resp.write(data[k:k + 7])
            await asyncio.sleep(0)
    else:
        for ev in data.split(b"\n\n")[:-1] if mode != "crlf" else [data]:
            await resp.write(ev + (b"\n\n" if mode != "crlf" else b""))
            await asyncio.sleep(0.001)
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def endpoints() -> Iterator[list[Endpoint]]:
    """Two endpoints served from one background event loop."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    # Each server keeps the socket it was given: asking for a free port and binding it later races
    # with every other process (and can hand the same port out twice).
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    eps = [Endpoint(f"http://127.0.0.1:{s.getsockname()[1]}") for s in socks]
    runners = []

    async def start() -> None:
        for ep, sock in zip(eps, socks):
            app = web.Application()
            app["endpoint"] = ep
            app.router.add_post("/v1/completions", _completions)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            runners.append(runner)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield eps
    for r in runners:
        asyncio.run_coroutine_threadsafe(r.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _reqs(mode: str, n: int, output_len: int = 16, input_len: int = 8, stream: bool = True) -> list[client.Request]:
    return [client.Request(i, client.completions_body(mode, [i + 3] * input_len, output_len, stream),
                           input_len, output_len) for i in range(n)]


@pytest.mark.parametrize("mode", ["normal", "split", "spaced", "crlf"])
def test_stream_parsing_counts_every_token(endpoints: list[Endpoint], mode: str) -> None:
    out = client.run(client.run_requests([endpoints[0].url], "/v1/completions", _reqs(mode, 6), concurrency=3))
    assert len(out.results) == 6
    for r in out.results:
        assert r.ok, r.error
        assert r.prompt_tokens == 8 and r.output_tokens == 16 and r.token_events == 16
        assert len(r.itl) == 15
        assert 0 < r.ttft <= r.latency <= r.end - r.start + 1e-9
        assert r.ttft + sum(r.itl) == pytest.approx(r.latency)
    assert out.start <= min(r.start for r in out.results) and out.end >= max(r.end for r in out.results)


def test_last_event_without_its_blank_line_still_counts(endpoints: list[Endpoint]) -> None:
    """A server that closes right after its last token event, without the blank line, usage or [DONE]."""
    out = client.run(client.run_requests([endpoints[0].url], "/v1/completions", _reqs("unterminated", 2),
                                         concurrency=1))
    for r in out.results:
        assert r.ok, r.error
        assert r.token_events == 16 and r.output_tokens == 16 and len(r.itl) == 15
        assert r.prompt_tokens is None  # no usage was sent: unknown, not guessed


def test_body_forces_output_length_and_usage() -> None:
    body = json.loads(client.completions_body("m", [1, 2, 3], 32, True))
    assert body["max_tokens"] == body["min_tokens"] == 32 and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True} and body["prompt"] == [1, 2, 3]
    chat = json.loads(client.chat_body("m", [{"role": "user", "content": "hi"}], 8, False))
    assert chat["max_tokens"] == chat["min_tokens"] == 8 and "stream_options" not in chat


def test_non_streaming_has_latency_but_no_ttft(endpoints: list[Endpoint]) -> None:
    out = client.run(client.run_requests([endpoints[0].url], "/v1/completions",
                                         _reqs("normal", 4, stream=False), concurrency=2, stream=False))
    for r in out.results:
        assert r.ok and r.ttft is None and r.itl == [] and r.latency > 0
        assert r.output_tokens == 16 and r.prompt_tokens == 8


def test_failures_are_counted_not_raised(endpoints: list[Endpoint]) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused and no one can take it
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
        cases = {"error500": endpoints[0].url, "midstream": endpoints[0].url, "normal": dead}
        for mode, url in cases.items():
            out = client.run(client.run_requests([url], "/v1/completions", _reqs(mode, 5), concurrency=2))
            assert len(out.results) == 5
            assert all(not r.ok and r.error for r in out.results), mode
    assert "500" in out.results[0].error or "Connect" in out.results[0].error
    t0 = time.monotonic()
    out = client.run(client.run_requests([endpoints[0].url], "/v1/completions", _reqs("slow", 2),
                                         concurrency=2, timeout_s=0.5))
    assert time.monotonic() - t0 < 20  # the server answers after 30 s: the client's 0.5 s timeout cut it
    assert all(r.error and "timeout" in r.error for r in out.results)


def test_least_outstanding_spreads_over_endpoints_and_warmup_is_excluded(endpoints: list[Endpoint]) -> None:
    for ep in endpoints:
        ep.hits.clear()
    lb = client.Balancer([ep.url for ep in endpoints])
    out = client.run(client.run_requests(lb.urls, "/v1/completions", _reqs("normal", 40), concurrency=4,
                                         warmup=_reqs("normal", 3), balancer=lb))
    assert len(out.results) == 40 and all(r.ok for r in out.results)
    assert sum(len(ep.hits) for ep in endpoints) == 43  # the warm-up reached the servers...
    assert len(out.send_times) == 40                    # ...but not the results
    per = [sum(r.endpoint == ep.url for r in out.results) for ep in endpoints]
    assert min(per) >= 12, per
    assert lb.outstanding == [0, 0]


def test_open_loop_achieves_the_scheduled_rate(endpoints: list[Endpoint]) -> None:
    n, rate, seed = 60, 40.0, 7
    delays = client.arrival_delays(n, rate, 1.0, seed)
    planned = (n - 1) / sum(delays)
    out = client.run(client.run_requests([endpoints[0].url], "/v1/completions", _reqs("normal", n, output_len=2),
                                         rate=rate, burstiness=1.0, seed=seed))
    assert all(r.ok for r in out.results)
    assert out.achieved_rate() == pytest.approx(planned, rel=0.15)


def test_gamma_arrivals_have_the_requested_mean_and_burstiness() -> None:
    d = client.arrival_delays(20001, 10.0, 0.25, 1)[1:]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / len(d)
    assert mean == pytest.approx(0.1, rel=0.05)
    # gamma(k, theta): CV^2 = 1/k -> 4 for burstiness 0.25 (burstier than Poisson's 1)
    assert var / mean ** 2 == pytest.approx(4.0, rel=0.15)
    assert client.arrival_delays(3, float("inf"), 1.0, 1) == [0.0, 0.0, 0.0]


def test_stop_event_cancels_in_flight_requests(endpoints: list[Endpoint]) -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    out = client.run(client.run_requests([endpoints[0].url], "/v1/completions", _reqs("slow", 4), concurrency=2,
                                         stop=stop))
    assert out.stopped and time.monotonic() - t0 < 20  # not the server's 30 s


def test_balancer_prefers_idle_endpoint() -> None:
    lb = client.Balancer(["a", "b", "c"])
    first = [lb.acquire() for _ in range(3)]
    assert sorted(first) == [0, 1, 2]
    lb.release(1)
    assert lb.acquire() == 1
    with pytest.raises(ValueError):
        client.Balancer([])
