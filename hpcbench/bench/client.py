"""The load generator: asyncio + aiohttp against OpenAI-compatible vLLM endpoints.

Hot path kept small so the client is never the bottleneck: request bodies are JSON-encoded before the
clock starts, the SSE stream is scanned as bytes (a token event is recognised by `"choices":[{`
without parsing JSON; only the final usage event and unusual events are parsed), one perf_counter()
per network read, and connections are kept alive and reused.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Callable, Sequence

from hpcbench.api_key import auth_headers

# vLLM writes compact JSON; the spaced form covers servers that use json.dumps defaults.
_TOKEN_MARKS = (b'"choices":[{', b'"choices": [{')
_DONE = b"data: [DONE]"
_HEADERS = {"Content-Type": "application/json"}


@dataclass(slots=True)
class Request:
    """One prepared request: the encoded body and the lengths it must produce."""

    index: int
    body: bytes
    input_len: int
    output_len: int


@dataclass(slots=True)
class Result:
    """What one request did. Times in seconds; start/end are perf_counter() values."""

    index: int
    endpoint: str = ""
    sent_at: float = 0.0            # wall clock (epoch s) when sent
    start: float = 0.0
    end: float = 0.0                # response fully read
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    latency: float | None = None    # send -> last token (vLLM's definition); whole body when not streaming
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_events: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency is not None


@dataclass
class RunOutcome:
    results: list[Result]
    start: float                    # first measured send (perf_counter)
    end: float                      # last measured completion
    send_times: list[float]         # perf_counter of every measured send, in send order
    stopped: bool = False

    @property
    def duration(self) -> float:
        return max(self.end - self.start, 1e-9)

    def achieved_rate(self) -> float | None:
        """Sends per second over the sending window ((n - 1) gaps between n sends)."""
        t = sorted(self.send_times)
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (len(t) - 1) / (t[-1] - t[0])


def completions_body(model: str, prompt: list[int] | str, output_len: int, stream: bool) -> bytes:
    """Forced output length: max_tokens = min_tokens = output_len and EOS ignored."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": output_len,
                            "min_tokens": output_len, "ignore_eos": True, "temperature": 0.0,
                            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


def chat_body(model: str, messages: list[dict[str, str]], output_len: int, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": output_len,
                            "min_tokens": output_len,
                            "ignore_eos": True, "temperature": 0.0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


class Balancer:
    """Least outstanding requests across endpoints; ties go round-robin so replicas share evenly."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("no endpoints")
        self.urls = list(urls)
        self.outstanding = [0] * len(urls)
        self.sent = [0] * len(urls)
        self._next = 0

    def acquire(self) -> int:
        n = len(self.urls)
        if n == 1:
            best = 0
        else:
            out, start = self.outstanding, self._next
            best = start
            for k in range(1, n):
                j = (start + k) % n
                if out[j] < out[best]:
                    best = j
            self._next = (best + 1) % n
        self.outstanding[best] += 1
        self.sent[best] += 1
        return best

    def release(self, i: int) -> None:
        self.outstanding[i] -= 1


def _parse_event(ev: bytes, res: Result) -> bool:
    """Slow path for an event that is not a compact token event. Returns True if it carried a token."""
    at = ev.find(b"data:")
    if at < 0:
        return False  # comment or keep-alive
    payload = ev[at + 5:].strip()
    if not payload or payload == b"[DONE]":
        return False
    try:
        data = json.loads(payload)
    except ValueError:
        res.error = f"bad SSE event: {payload[:200]!r}"
        return False
    if not isinstance(data, dict):
        return False
    if data.get("error"):
        res.error = f"server error: {str(data['error'])[:300]}"
        return False
    usage = data.get("usage")
    if usage:
        res.prompt_tokens = usage.get("prompt_tokens")
        res.output_tokens = usage.get("completion_tokens")
    return bool(data.get("choices"))


async def _send(session: Any, url: str, req: Request, res: Result, stream: bool, timeout: Any) -> None:
    res.sent_at = time.time()
    st = res.start = perf_counter()
    async with session.post(url, data=req.body, headers=_HEADERS, timeout=timeout) as resp:
        if resp.status != 200:
            res.end = perf_counter()
            res.error = f"HTTP {resp.status}: {(await resp.read())[:300].decode(errors='replace')}"
            return
        if not stream:
            raw = await resp.read()
            res.end = now = perf_counter()
            data = json.loads(raw)
            usage = data.get("usage") or {}
            res.prompt_tokens = usage.get("prompt_tokens")
            res.output_tokens = usage.get("completion_tokens")
            if not data.get("choices"):
                res.error = f"no choices in response: {raw[:300]!r}"
                return
            res.latency = now - st
            return
        read = resp.content.readany
        itl = res.itl
        append = itl.append
        last = st
        first = True
        events = 0
        buf = b""
        while True:
            chunk = await read()
            if not chunk:
                if not buf.strip():
                    break
                chunk = b"\n\n"  # a last event without its blank line: end it, same path as the others
            now = perf_counter()
            if buf:
                chunk = buf + chunk
            if b"\r" in chunk:
                chunk = chunk.replace(b"\r\n", b"\n")
            parts = chunk.split(b"\n\n")
            buf = parts.pop()
            for ev in parts:
                if _TOKEN_MARKS[0] in ev or _TOKEN_MARKS[1] in ev or (
                        not ev.startswith(_DONE) and _parse_event(ev, res)):
                    if first:
                        first = False
                        res.ttft = now - st
                    else:
                        append(now - last)
                    last = now
                    events += 1
        res.end = perf_counter()
        res.token_events = events
        if first:
            res.error = res.error or "stream ended without a token"
            return
        if res.error is None:
            res.latency = last - st
            if res.output_tokens is None:  # server sent no usage: one token per event
                res.output_tokens = events


def arrival_delays(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps before each of n sends: gamma(shape=burstiness, mean=1/rate); burstiness 1 = Poisson."""
    if rate == float("inf") or rate <= 0:
        return [0.0] * n
    rng = random.Random(seed)
    theta = 1.0 / (rate * burstiness)
    return [0.0] + [rng.gammavariate(burstiness, theta) for _ in range(n - 1)]


async def run_requests(endpoints: Sequence[str], path: str, requests: Sequence[Request], *,
                       concurrency: int | None = None, rate: float | None = None, burstiness: float = 1.0,
                       seed: int = 0, stream: bool = True, timeout_s: float = 600.0,
                       warmup: Sequence[Request] = (), stop: threading.Event | None = None,
                       on_done: Callable[[Result], None] | None = None,
                       balancer: Balancer | None = None) -> RunOutcome:
    """Send requests: closed loop with `concurrency` in flight, or open loop at `rate` requests/s.

    Warm-up requests go first and are not returned. Failed requests are returned with their error.
    When `stop` is set, in-flight requests are cancelled and the outcome is marked stopped."""
    import aiohttp

    lb = balancer or Balancer(endpoints)
    urls = [u.rstrip("/") + path for u in lb.urls]
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    limit = concurrency or 0
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=None, force_close=False)
    results = [Result(index=r.index) for r in requests]
    sends: list[float] = []

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                     auto_decompress=False, skip_auto_headers=("User-Agent",),
                                     headers=auth_headers()) as session:

        async def one(req: Request, res: Result, record: bool) -> None:
            i = lb.acquire()
            res.endpoint = lb.urls[i]
            try:
                if record:
                    sends.append(perf_counter())
                await _send(session, urls[i], req, res, stream, timeout)
            except asyncio.CancelledError:
                res.error = res.error or "cancelled"
                raise
            except asyncio.TimeoutError:
                res.error = f"timeout after {timeout_s:g} s"
            except Exception as e:  # a dead endpoint or a broken stream is a failed request, not a crash
                res.error = f"{type(e).__name__}: {e}"
            finally:
                if not res.end:
                    res.end = perf_counter()
                lb.release(i)
            if record and on_done is not None:
                on_done(res)

        async def closed(reqs: Sequence[Request], outs: list[Result], width: int, record: bool) -> None:
            it = iter(range(len(reqs)))

            async def worker() -> None:
                for k in it:
                    await one(reqs[k], outs[k], record)

            await asyncio.gather(*(worker() for _ in range(min(width, len(reqs)))))

        async def open_loop() -> None:
            delays = arrival_delays(len(requests), rate or float("inf"), burstiness, seed)
            tasks = []
            t = perf_counter()
            for req, res, d in zip(requests, results, delays):
                t += d
                wait = t - perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(one(req, res, True)))
            await asyncio.gather(*tasks)

        async def body() -> None:
            if warmup:
                await closed(warmup, [Result(index=r.index) for r in warmup],
                             min(len(warmup), concurrency or len(warmup)), False)
            if concurrency is not None:
                await closed(requests, results, concurrency, True)
            else:
                await open_loop()

        main = asyncio.ensure_future(body())
        stopped = False
        if stop is not None:
            async def watch() -> None:
                nonlocal stopped
                while not main.done():
                    if stop.is_set():
                        stopped = True
                        main.cancel()
                        return
                    await asyncio.sleep(0.2)
            watcher = asyncio.ensure_future(watch())
        try:
            await main
        except asyncio.CancelledError:
            if not stopped:
                raise
        finally:
            if stop is not None:
                watcher.cancel()

    done = [r for r in results if r.start]
    start = min((r.start for r in done), default=0.0)
    end = max((r.end for r in done), default=start)
    return RunOutcome(results=results, start=start, end=end, send_times=sends, stopped=stopped)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (vLLM depends on it): a cheaper event loop for the client."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(coro: Any) -> Any:
    """Run coro to completion on a fresh loop from new_event_loop()."""
    if sys.version_info < (3, 11):
        return _run_without_runner(coro)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


def _run_without_runner(coro: Any) -> Any:
    """Python 3.10 has neither asyncio.Runner nor a loop factory for asyncio.run: its steps by hand."""
    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_pending(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left on the loop and let them finish, as asyncio.run does on the way out."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
