"""`hpcbench submit`: plan -> Job -> rendered script -> experiment directory -> scheduler.

Everything that can be refused (unknown names, impossible plans, bad values) is refused before a
directory is created or anything is queued.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from hpcbench.config import load_site, load_sweep
from hpcbench.config.model import find_model
from hpcbench.config.errors import UserError
from hpcbench.config.job import Job, resolve_job
from hpcbench.experiment import CONFIG, JOB_SCRIPT, SUBMIT, Experiment, atomic_write, default_root, utc_now, write_json
from hpcbench.plan import DEFAULT_MODEL, DEFAULT_SITE, default_sweep
from hpcbench.render import render_job
from hpcbench.schedulers.base import SchedulerError, Submitted, get_scheduler


def job_warnings(job: Job) -> list[str]:
    """What is allowed but likely to disappoint: the planner's warnings, a walltime too short."""
    from hpcbench.config.values import parse_walltime

    out = list(job.plan.warnings)
    wall = parse_walltime(job.walltime)
    if job.timeouts.engine_s + job.timeouts.ray_s >= wall:
        out.append(f"the walltime ({job.walltime}) is not longer than the time allowed to start Ray and load "
                   f"the engine ({job.timeouts.ray_s} s + {job.timeouts.engine_s} s): the job may end while "
                   "loading; raise --walltime or lower --engine-timeout")
    return out


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"hpcbench: warning: {warning}", file=sys.stderr)


def check_root(root: Path) -> None:
    # Scheduler headers (#SBATCH --output=, #PBS -o) cannot quote a path, nor carry a control character.
    if re.search(r"[\s\x00-\x1f\x7f]", str(root.absolute())):
        raise UserError(f"experiments root {str(root)!r} contains white space or a control character, which "
                        "batch-script headers cannot carry; choose another --root")


def submit(args: argparse.Namespace) -> int:
    if args.resume:
        return resume(Path(args.resume), args)
    site = load_site(args.site or DEFAULT_SITE)
    model, model_path = find_model(args.model or DEFAULT_MODEL, site, args.model_path)
    sweep = load_sweep(args.sweep or default_sweep(site))
    root = args.root or default_root()
    check_root(root)
    exp = Experiment.allocate(root, site.name, model.name)
    job = resolve_job(site=site, model=model, sweep=sweep, experiment=exp.path, mode=args.mode,
                      nodes=args.nodes, tp=args.tp, max_model_len=args.max_model_len,
                      dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype, fit_load=args.fit_load,
                      account=args.account, queue=args.queue, walltime=args.walltime,
                      model_path=model_path, engine_timeout_s=args.engine_timeout)
    script = render_job(job)
    warnings = job_warnings(job)
    if args.dry_run:
        _warn(warnings)
        print(script, end="")
        print(f"# dry run: would create {exp.path} and submit with {site.scheduler.kind}; nothing submitted",
              file=sys.stderr)
        return 0
    made = create_experiment(exp)  # first: a root that cannot hold the experiment is refused before anything is made
    try:
        if model.local and not args.model_path:  # a path the user names is used as it is, never written
            _ensure_tiny_model(job)
        atomic_write(exp.file(JOB_SCRIPT), script)
        job.save(exp.file(CONFIG))
    except BaseException:
        remove_made(made)
        raise
    result = _send(exp, job, made=made)
    _warn(warnings)  # after the scheduler's answer, so a refusal stays one line
    return _submitted(exp, job, result, args)


def create_experiment(exp: Experiment) -> list[Path]:
    """Create the experiment directory; returns the folders that did not exist before, deepest first."""
    new = []
    for folder in (exp.path, *exp.path.parents):
        if folder.exists():
            break
        new.append(folder)
    try:
        exp.create()
    except OSError as exc:
        remove_made(new)
        raise UserError(f"cannot create the experiment directory {exp.path}: {exc.strerror or exc}; "
                        "choose another --root") from None
    return new


def remove_made(folders: list[Path]) -> None:
    """Remove the experiment directory and the parents made for it, unless another job uses them now."""
    if folders:
        shutil.rmtree(folders[0], ignore_errors=True)
    for folder in folders[1:]:
        try:
            folder.rmdir()
        except OSError:  # not empty: another submit put its experiment there meanwhile
            return


def resume(path: Path, args: argparse.Namespace) -> int:
    """Submit an experiment's own job.sh again: the sweep skips the points already in points.csv."""
    ignored = [f"--{name.replace('_', '-')}" for name in ("site", "model", "sweep", "mode", "nodes", "tp", "max_model_len",
               "dtype", "kv_cache_dtype", "fit_load", "account", "queue", "walltime", "model_path",
               "engine_timeout", "root")
               if getattr(args, name, None) not in (None, False)]
    if ignored:
        raise UserError(f"--resume re-submits the experiment's own job.sh and config.yaml unchanged, so "
                        f"{', '.join(ignored)} would be ignored; edit {path}/job.sh (its header) instead, "
                        "or submit a new experiment")
    exp = Experiment(path.absolute())
    job = load_resumable(exp, path)
    if job.endpoints is not None:  # made by `hpcbench bench`: its servers run elsewhere, no job to queue
        from hpcbench.bench.endpoint import resume_endpoints

        return resume_endpoints(exp, job, [], dry_run=args.dry_run)
    if not exp.file(JOB_SCRIPT).is_file():
        raise UserError(f"{path} is not an experiment directory (no {CONFIG} and {JOB_SCRIPT})")
    record = exp.submit_record() or {}
    if args.dry_run:  # the script is the experiment's own: show it, change nothing
        print(exp.file(JOB_SCRIPT).read_text(), end="")
        print(f"# dry run: would submit {exp.file(JOB_SCRIPT)} again; nothing submitted", file=sys.stderr)
        return 0
    # The last attempt's end records make way for the new job's, but come back if the scheduler refuses.
    markers = [exp.file(name) for name in ("finished", "phase.json") if exp.file(name).exists()]
    for marker in markers:
        marker.rename(marker.with_name(marker.name + ".previous"))
    try:
        result = _send(exp, job, previous=record)
    except BaseException:
        for marker in markers:
            marker.with_name(marker.name + ".previous").rename(marker)
        raise
    for marker in markers:
        marker.with_name(marker.name + ".previous").unlink(missing_ok=True)
    return _submitted(exp, job, result, args)


def load_resumable(exp: Experiment, path: Path) -> Job:
    """The job of an experiment that may run again: refused while its last run is still live."""
    if not exp.file(CONFIG).is_file():
        raise UserError(f"{path} is not an experiment directory (no {CONFIG})")
    job = Job.load(exp.file(CONFIG))
    record = exp.submit_record() or {}
    if record.get("job_id"):
        from hpcbench.status import job_states

        state = job_states([exp])[exp.path]
        if not state.state.terminal and state.state.value != "unknown":
            raise UserError(f"{path} is still {state.state.value} as job {record['job_id']}; cancel it first")
    return job


def _ensure_tiny_model(job: Job) -> None:
    from hpcbench.runtime.tiny_model import make_tiny_model, needs_libraries

    path = Path(job.model_path)
    if not (path / "config.json").is_file():
        needs_libraries()  # before saying anything: a missing library is the only line printed
        print(f"hpcbench: making the tiny model in {path}", file=sys.stderr)
        make_tiny_model(path)


def _send(exp: Experiment, job: Job, previous: dict | None = None, made: list[Path] | None = None) -> Submitted:
    """Submit the experiment's job.sh and record it in submit.json (with the earlier attempts). made: the
    folders this submit created, taken back when the scheduler refuses (then nothing is queued)."""
    sched = get_scheduler(job.site.scheduler.kind, accounting=job.site.scheduler.accounting)
    try:
        result = sched.submit(exp.file(JOB_SCRIPT), workdir=exp.path, pass_env=job.secrets)
    except SchedulerError:
        remove_made(made or [])
        raise
    history = list((previous or {}).get("history", []))
    if previous and previous.get("job_id"):
        history.append({k: previous.get(k) for k in ("job_id", "submitted")})
    write_json(exp.file(SUBMIT), {
        "scheduler": sched.kind, "job_id": result.job_id, "command": result.command, "submitted": utc_now(),
        "site": job.site.name, "model": job.model.name, "nodes": job.plan.nodes, "mode": job.mode,
        "sweep": job.sweep.name, "accounting": job.site.scheduler.accounting, "history": history})
    exp.set_phase("submitted", f"job {result.job_id}")
    return result


def _submitted(exp: Experiment, job: Job, result: Submitted, args: argparse.Namespace) -> int:
    print(f"submitted job {result.job_id} ({job.site.scheduler.kind}) for {job.model.name} on {job.site.name}: "
          f"TP {job.plan.tp} x PP {job.plan.pp}, {job.plan.nodes} node(s), {job.plan.replicas} replica(s)")
    print(f"experiment: {exp.path}")
    if getattr(args, "wait", False):
        from hpcbench.status import follow

        return follow(exp)
    return 0
