"""`hpcbench bench`: the sweep against OpenAI-compatible servers that hpcbench did not start.

A server started by hand, a centre's shared endpoint, or the servers of a job a user runs with their own
script: the same sweep engine, prompts and metrics as a submitted job, written to an ordinary experiment
directory (config.yaml, submit.json, phase.json, finished, results/), so `status`, `collect` and
`--resume` treat it like any other. The run is this process: it is recorded as a local job (pid and
start time), so status sees it live while it runs and cancel stops it.

Everything is asked of the servers before anything is created: they must answer /v1/models, serve the
same model and hold the sweep's longest context. What they cannot say (GPUs, nodes, TP, PP, dtype) is
what the user says, or stays empty in the results; it is never guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hpcbench import __version__
from hpcbench.config import load_site, load_sweep
from hpcbench.config.errors import UserError
from hpcbench.config.job import Endpoints, Job, Ports, Timeouts
from hpcbench.config.model import find_model
from hpcbench.config.values import format_walltime, parse_walltime
from hpcbench.experiment import CONFIG, FINISHED, SUBMIT, Experiment, default_root, utc_now, write_json
from hpcbench.plan import DEFAULT_SITE, default_sweep, described_plan
from hpcbench.runtime import provenance
from hpcbench.runtime.engine import http_get
from hpcbench.schedulers.local import LocalScheduler

ASK_TIMEOUT_S = 10.0
GENERIC_ENGINE = "openai-compatible"


def endpoint_url(text: str) -> str:
    """A server's base URL: http(s)://host:port[/prefix], without a trailing / or /v1."""
    url = text.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UserError(f"--endpoint {text!r}: expected a base URL such as http://HOST:PORT")
    return url


@dataclass(frozen=True)
class Answer:
    """What one server says of itself."""

    url: str
    models: list[dict[str, Any]]  # its /v1/models entries
    version: str  # from /version (vLLM) or /get_server_info (SGLang), "" when it does not say

    def entry(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.models if m.get("id") == name), None)


def _json(url: str) -> Any:
    status, body = http_get(url, timeout=ASK_TIMEOUT_S)
    if status != 200:
        raise UserError(f"{url} answered HTTP {status}")
    try:
        return json.loads(body)
    except ValueError:
        raise UserError(f"{url} did not answer JSON") from None


def ask(url: str) -> Answer:
    try:
        data = _json(f"{url}/v1/models")
    except OSError as exc:
        raise UserError(f"endpoint {url} does not answer ({getattr(exc, 'reason', exc)}); is the server "
                        "up, and reachable from here?") from None
    except UserError as exc:
        hint = f" (set {_key_env()} if it needs a key)" if "HTTP 401" in str(exc) else ""
        raise UserError(f"endpoint {url} is not an OpenAI-compatible server: {exc}{hint}") from None
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise UserError(f"endpoint {url} lists no model at /v1/models")
    version = ""
    for path in ("/version", "/get_server_info"):
        try:
            said = _json(url + path)
        except (OSError, UserError):
            continue
        if isinstance(said, dict) and isinstance(said.get("version"), str):
            version = said["version"]
            break
    return Answer(url, models, version)


def _key_env() -> str:
    from hpcbench.api_key import API_KEY_ENV

    return API_KEY_ENV


def describe(urls: list[str], served: str | None) -> tuple[Endpoints, int | None]:
    """The servers as one deployment: (Endpoints, their max-model-len when they say it). served: the
    model name to send (default: the first server's first model); every server must serve it."""
    if len(set(urls)) != len(urls):
        raise UserError("the same --endpoint is given twice: each server once")
    answers = [ask(u) for u in urls]
    name = served or str(answers[0].models[0].get("id") or "")
    entries = []
    for a in answers:
        entry = a.entry(name)
        if entry is None:
            have = ", ".join(str(m.get("id")) for m in a.models)
            raise UserError(f"endpoint {a.url} does not serve {name!r} (it serves {have})"
                            + ("" if served else "; the servers must serve the same model, or pass --served-model"))
        entries.append(entry)
    engines = {str(e.get("owned_by") or GENERIC_ENGINE) for e in entries}
    versions = {a.version for a in answers}
    lengths = {e.get("max_model_len") for e in entries}
    if len(engines) > 1 or len(versions) > 1 or len(lengths) > 1:
        said = "; ".join(f"{a.url}: {e.get('owned_by')} {a.version or '?'}, max_model_len {e.get('max_model_len')}"
                         for a, e in zip(answers, entries))
        raise UserError(f"the endpoints are not one deployment ({said}): benchmark them separately")
    length = lengths.pop()
    context = length if isinstance(length, int) and length > 0 else None
    return Endpoints(urls=urls, served_model=name, engine=engines.pop(), engine_version=versions.pop()), context


def resolve(args: argparse.Namespace, root: Path) -> tuple[Job, Experiment]:
    """The Job of a run against args.endpoint and its (not yet created) experiment directory, refusing
    what cannot work before anything is created."""
    site = load_site(args.site or DEFAULT_SITE)
    model, model_path = find_model(args.model, site, args.tokenizer, "--tokenizer")
    exp = Experiment.allocate(root, site.name, model.name)
    sweep = load_sweep(args.sweep or default_sweep(site))
    offline = [s.name for s in sweep.scenarios if s.api == "offline"]
    if offline:
        raise UserError(f"sweep {sweep.name!r} has offline scenarios ({', '.join(offline)}), which run inside "
                        "a job (hpcbench submit --mode offline), not against a server")
    endpoints, served_len = describe([endpoint_url(u) for u in args.endpoint], args.served_model)
    needed = sweep.needed_context()
    context = served_len or args.max_model_len or needed
    if served_len and args.max_model_len and args.max_model_len != served_len:
        raise UserError(f"--max-model-len {args.max_model_len}, but the servers say {served_len}")
    if needed > context:
        raise UserError(f"sweep {sweep.name!r} needs {needed} tokens of context; the servers hold {context}")
    if any(s.api == "chat" for s in sweep.scenarios):
        _check_tokenizer(model_path)
    plan = described_plan(model, site, sweep, replicas=len(endpoints.urls), context=context, gpus=args.gpus,
                          nodes=args.nodes, tp=args.tp, pp=args.pp, dtype=args.dtype)
    return Job(experiment=str(exp.path), site=site, model=model, model_path=model_path, mode="endpoint",
               plan=plan, sweep=sweep, python=sys.executable, engine_args=[],
               ports=Ports(ray=site.ray.port, engine=site.engine.port),
               timeouts=Timeouts(ray_s=site.ray.ready_timeout_s, engine_s=plan.engine_ready_timeout_s),
               walltime=format_walltime(parse_walltime(site.scheduler.walltime)),
               job_name=f"hpcb-bench-{(model.aliases or [model.name])[0]}"[:63], endpoints=endpoints), exp


def _check_tokenizer(path: str) -> None:
    """Chat prompts are text made with the model's tokenizer: it must load here, now."""
    from hpcbench.bench.prompts import load_tokenizer

    try:
        load_tokenizer(path)
    except Exception as exc:  # transformers raises many kinds
        raise UserError(f"the sweep has chat scenarios, which need the model's tokenizer, and it does not load "
                        f"from {path} ({type(exc).__name__}); pass --tokenizer DIR") from None


def bench_command(args: argparse.Namespace) -> int:
    from hpcbench.submit import check_root, create_experiment, remove_made

    if args.resume:
        return resume_command(args)
    if not args.endpoint:
        raise UserError("--endpoint URL is required (repeat it for several servers), or --resume EXP")
    if not args.model:
        raise UserError("--model is required: the catalog name, Hugging Face id or folder of what the servers run")
    root = args.root or default_root()
    check_root(root)
    job, exp = resolve(args, root)
    for warning in job.plan.warnings:
        print(f"hpcbench: warning: {warning}", file=sys.stderr)
    made = create_experiment(exp)
    try:
        job.save(exp.file(CONFIG))
    except BaseException:
        remove_made(made)
        raise
    return run(exp, job, history=[])


def resume_command(args: argparse.Namespace) -> int:
    given = [f"--{n.replace('_', '-')}" for n in ("model", "tokenizer", "sweep", "site", "gpus", "nodes", "tp",
                                                   "pp", "dtype", "max_model_len", "served_model", "root")
             if getattr(args, n, None) is not None]
    if given:
        raise UserError(f"--resume runs the rest of the experiment as it was recorded, so {', '.join(given)} "
                        "would be ignored; start a new run instead")
    from hpcbench.submit import load_resumable

    path = Path(args.resume)
    exp = Experiment(path.absolute())
    job = load_resumable(exp, path)
    if job.endpoints is None:
        raise UserError(f"{path} was submitted as a job; resume it with hpcbench submit --resume {path}")
    return resume_endpoints(exp, job, [endpoint_url(u) for u in args.endpoint or []])


def resume_endpoints(exp: Experiment, job: Job, urls: list[str], dry_run: bool = False) -> int:
    """Run the points an endpoint experiment has not done; urls: where its servers are now (default:
    where they were). They must still be the same deployment."""
    assert job.endpoints is not None
    now, _ = describe(urls or job.endpoints.urls, job.endpoints.served_model)
    before = job.endpoints
    if (now.engine, now.engine_version, len(now.urls)) != (before.engine, before.engine_version, len(before.urls)):
        raise UserError(f"the servers now run {now.engine} {now.engine_version or '?'} x{len(now.urls)}, the "
                        f"experiment {before.engine} {before.engine_version or '?'} x{len(before.urls)}: "
                        "start a new run")
    if dry_run:
        print(f"# dry run: would run the rest of {exp.path} against {', '.join(now.urls)}; nothing run",
              file=sys.stderr)
        return 0
    if now.urls != before.urls:
        job.endpoints = now
        job.save(exp.file(CONFIG))
    record = exp.submit_record() or {}
    history = list(record.get("history", []))
    if record.get("job_id"):
        history.append({k: record.get(k) for k in ("job_id", "submitted")})
    return run(exp, job, history)


def _exit_record(exp: Experiment, job_id: str, attempt: int, started: str, reason: str, code: int | None,
                 signame: str | None = None) -> None:
    """The `finished` record a batch script writes (docs/experiments.md), for this process's run."""
    write_json(exp.file(FINISHED), {"exit_code": code, "reason": reason, "final": reason != "running",
                                    "job_id": job_id, "attempt": attempt, "attempt_started": started,
                                    "deadline": None, "signal": signame, "time": utc_now()})


def run(exp: Experiment, job: Job, history: list[dict[str, Any]]) -> int:
    """This process runs the sweep, recorded as a local job so status and cancel see it."""
    from hpcbench.bench.rows import PointFailed
    from hpcbench.bench.sweep import run_sweep
    from hpcbench.runtime.driver import Stopper

    assert job.endpoints is not None
    urls = job.endpoints.urls
    job_id, started, attempt = LocalScheduler.this_process(), utc_now(), len(history)
    write_json(exp.file(SUBMIT), {
        "scheduler": "local", "job_id": job_id, "command": ["hpcbench", *sys.argv[1:]], "submitted": started,
        "site": job.site.name, "model": job.model.name, "nodes": job.plan.nodes, "mode": job.mode,
        "sweep": job.sweep.name, "accounting": "auto", "history": history})
    exp.mark_started()
    _exit_record(exp, job_id, attempt, started, "running", None)
    provenance.write(exp, {"hpcbench": __version__, "client": provenance.versions(), "start_time": started,
                           "endpoints": [{"url": u, "engine": job.endpoints.engine,
                                          "version": job.endpoints.engine_version} for u in urls],
                           "served_model": job.endpoints.served_model, "plan": job.plan.reasons})
    print(f"benchmarking {job.endpoints.served_model} ({job.endpoints.engine} {job.endpoints.engine_version}) at "
          f"{', '.join(urls)}: sweep {job.sweep.name}\nexperiment: {exp.path}", flush=True)
    os.environ["HPCBENCH_JOB_ID"] = job_id  # as inside a job: rows carry it, prompts are seeded by it
    stopper = Stopper().install()
    reason, code, failure = "failed", 1, ""
    try:
        result = run_sweep(job, exp, urls, stopper.event)
        if result.complete:
            reason, code = "completed", 0
            exp.set_phase("done", f"{len(result.ran)} point(s) run of {result.total}, "
                                  f"{result.failed_requests} failed request(s)")
        else:
            failure = stopper.reason()
    except PointFailed as exc:
        failure = str(exc)
    except BaseException as exc:
        failure = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if failure:
            if stopper.signum:
                reason, code = "cancelled", stopper.exit_code
            exp.set_phase("failed", failure)
        _exit_record(exp, job_id, attempt, started, reason, code,
                     signame=signal.Signals(stopper.signum).name[3:] if stopper.signum else None)
        stopper.restore()
    if code == 0:
        print(f"done: {exp.path}")
        return 0
    if stopper.signum:
        print(f"hpcbench: {failure}; the points done are kept, `hpcbench bench --resume {exp.path}` runs the rest",
              file=sys.stderr)
        return code
    raise UserError(f"{failure}; the points done are kept, `hpcbench bench --resume {exp.path}` runs the rest")
