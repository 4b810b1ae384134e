"""The in-job driver (`hpcbench driver EXP`, run on the head node by the batch script).

starting -> ray (all nodes joined) -> loading (engine starting) -> ready -> sweeping -> done, or failed
with a one-line reason in phase.json. SIGTERM/SIGINT/SIGUSR1 set a stop event; so does the job's end:
the batch script exports HPCBENCH_DEADLINE (epoch seconds at which the scheduler kills the job) and
HPCBENCH_TEARDOWN_S (what it needs after the driver), and the driver ends before their difference
(PBS sends no signal before its walltime kill). The servers are always stopped before the driver
returns, and the exit code says how it ended: 0, 1, 2 (configuration), 124 (out of time: resume
runs the rest) or 128 + signal.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.bench.rows import Deadline, PointFailed, SweepResult
from hpcbench.config.errors import UserError
from hpcbench.config.job import Job
from hpcbench.experiment import CONFIG, Experiment, atomic_write, utc_now
from hpcbench.render import TEARDOWN_S  # what the batch script needs after the driver, when it does not say
from hpcbench.runtime import engine, provenance
from hpcbench.runtime.cluster import ClusterError, wait_for_cluster

SWEEP_JOIN_S = 2.0  # a stopped sweep aborts its point within a fraction of a second
# From the stop event to this process's end: the watcher's poll, the sweep's join, the servers' stop.
STOP_S = engine.POLL_S + SWEEP_JOIN_S + engine.STOP_GRACE_S + 2 * engine.KILL_WAIT_S + 2.0
WALLTIME_EXIT = 124


def pgids_file(job_id: str) -> str:
    """Read by the batch script's teardown if this driver is killed. Named per job: a resumed job may
    start in the same directory while the previous one is still tearing down."""
    return f".server-pgids-{job_id}"


def _seconds(env: Any, name: str) -> float | None:
    """A number of seconds from the batch script, or None when unset."""
    text = (env.get(name) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{name} must be a number of seconds, got {text!r}") from None


@dataclass(frozen=True)
class JobEnv:
    """What the batch script tells the driver; defaults make it usable without a scheduler."""

    job_id: str
    nodes: list[str]
    head_ip: str
    port_offset: int
    ray_address: str
    must_end: float | None = None  # epoch seconds: HPCBENCH_DEADLINE - HPCBENCH_TEARDOWN_S

    @classmethod
    def from_environ(cls, job: Job, environ: dict[str, str] | None = None) -> "JobEnv":
        env = os.environ if environ is None else environ
        nodes = env.get("HPCBENCH_NODES", "").split() or [socket.gethostname().split(".")[0]]
        head_ip = env.get("HPCBENCH_HEAD_IP") or "127.0.0.1"
        try:
            offset = int(env.get("HPCBENCH_PORT_OFFSET") or 0)
        except ValueError:
            raise UserError(f"HPCBENCH_PORT_OFFSET must be an integer, got {env['HPCBENCH_PORT_OFFSET']!r}") from None
        address = env.get("RAY_ADDRESS") or f"{head_ip}:{job.ports.ray + offset}"
        kill_at, teardown = _seconds(env, "HPCBENCH_DEADLINE"), _seconds(env, "HPCBENCH_TEARDOWN_S")
        must_end = None if kill_at is None else kill_at - (TEARDOWN_S if teardown is None else teardown)
        return cls(env.get("HPCBENCH_JOB_ID") or str(os.getpid()), nodes, head_ip, offset, address, must_end)

    def deadline(self) -> Deadline | None:
        """When the work must stop, leaving the driver STOP_S to stop its sweep and servers."""
        return None if self.must_end is None else Deadline(self.must_end - STOP_S)


class Stopper:
    """Signal handlers and the deadline's alarm only set an event (the work notices it); the first
    cause is remembered: a signal, or the walltime."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.walltime = False
        self._old: dict[int, Any] = {}
        self._alarm: threading.Timer | None = None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is None and not self.walltime:
            self.signum = signum
            print(f"hpcbench driver: {signal.Signals(signum).name} received, stopping", flush=True)
        self.event.set()

    def _expire(self) -> None:
        if self.signum is None and not self.event.is_set():
            self.walltime = True
            say("the job's time is nearly up, stopping")
        self.event.set()

    def install(self, deadline: Deadline | None = None) -> "Stopper":
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        if deadline is not None:
            self._alarm = deadline.alarm(self._expire)
        return self

    def restore(self) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else WALLTIME_EXIT if self.walltime else 1

    def reason(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}" if self.signum else "stopped"


class Failed(Exception):
    """Ends the run with phase failed and this one-line reason."""


class Walltime(Exception):
    """The job's time is (nearly) up: phase failed with this reason, exit code 124; resume runs the rest."""


def say(text: str) -> None:
    print(f"hpcbench driver: {text}", flush=True)


def one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first[:400]


def gpus_per_node(job: Job) -> int:
    if job.site.node.accelerator == "cpu":
        return 0
    return job.plan.accelerators_used // max(1, job.plan.nodes)


def _record_pgids(exp: Experiment, job_id: str, servers: list[engine.Server]) -> None:
    atomic_write(exp.file(pgids_file(job_id)), "".join(f"{s.proc.pid}\n" for s in servers))


class Run:
    """One driver run; the steps are methods so each is small and the teardown is in one place."""

    def __init__(self, exp: Experiment, job: Job, env: JobEnv, stopper: Stopper) -> None:
        self.exp, self.job, self.env, self.stopper = exp, job, env, stopper
        self.stop = stopper.event
        self.servers: list[engine.Server] = []
        self.prov: dict[str, Any] = {}
        self.t_start = time.monotonic()

    def cluster(self) -> dict[str, str]:
        job, env = self.job, self.env
        if not job.site.ray.enabled:
            return {env.nodes[0]: env.head_ip}
        self.exp.set_phase("ray", f"waiting for {len(env.nodes)} node(s) at {env.ray_address}")
        say(f"waiting for Ray: {len(env.nodes)} node(s) ({' '.join(env.nodes)}) at {env.ray_address}, "
            f"timeout {job.timeouts.ray_s} s")
        try:
            ips = wait_for_cluster(env.ray_address, env.nodes, gpus_per_node(job), job.timeouts.ray_s,
                                   node_ip=env.head_ip, stop=self.stop, progress=say)
        except ClusterError as exc:
            raise Failed(one_line(exc)) from exc
        return ips

    def engines(self, node_ips: dict[str, str]) -> float:
        job, env = self.job, self.env
        specs = engine.plan_servers(job, env.nodes, node_ips, env.port_offset, env.head_ip)
        # Site env is exported by the batch script; add it too so a driver run by hand behaves the same.
        for spec in specs:
            spec.env = {**job.site.env, **spec.env}
        self.servers = engine.launch(specs, self.exp.logs)
        _record_pgids(self.exp, self.env.job_id, self.servers)
        self.prov["engines"] = [{**d, "env": provenance.redact_env(d["env"], list(job.secrets))}
                                for d in engine.describe(self.servers)]
        provenance.write(self.exp, self.prov)
        say(f"started {len(specs)} server(s): " + ", ".join(f"{s.url} on {s.spec.node}" for s in self.servers)
            + f"; timeout {job.timeouts.engine_s} s; logs in {self.exp.logs}")
        try:
            return engine.wait_ready(self.servers, job.timeouts.engine_s, stop=self.stop, progress=say)
        except engine.EngineError as exc:
            say(str(exc))
            raise Failed(one_line(exc)) from exc

    def mark_ready(self, seconds: float) -> None:
        self.prov["ready_time"] = utc_now()
        self.prov["time_to_ready_s"] = round(seconds, 2)
        provenance.write(self.exp, self.prov)
        self.exp.set_phase("ready", f"{len(self.servers) or 1} engine(s) ready in {seconds:.0f} s",
                           endpoints=[s.url for s in self.servers])
        say(f"ready after {seconds:.1f} s")

    def sweep_servers(self) -> SweepResult | None:
        """Run the sweep in a thread while this one watches the servers and the stop event."""
        from hpcbench.bench.sweep import run_sweep

        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = run_sweep(self.job, self.exp, [s.url for s in self.servers], self.stop,
                                          self.env.deadline(), alive=lambda: not engine.dead(self.servers))
            except BaseException as exc:  # reported by the watching thread
                box["error"] = exc
                box["trace"] = traceback.format_exc()

        thread = threading.Thread(target=work, name="sweep", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(engine.POLL_S)
            if engine.dead(self.servers) or self.stop.is_set():
                self.stop.set()  # the running point is aborted and not written
                thread.join(SWEEP_JOIN_S)
                break
        # Also after the sweep ended by itself: it may have found the engine dead first.
        crashed = engine.dead(self.servers)
        if crashed:
            reason = engine.crash_reason(crashed[0], "during the sweep")
            say(f"{reason}\n{engine.log_tail(crashed[0].log)}")
            raise Failed(reason)
        if "error" in box:
            say(box["trace"])
            raise Failed(f"sweep failed: {one_line(box['error'])}")
        return box.get("result")

    def offline(self) -> SweepResult:
        from hpcbench.bench.offline import make_llm, run_offline_sweep

        say("loading the model in-process (offline mode)")
        # The environment a server of this job would get (on CPU: the KV cache space, without which
        # vLLM reserves most of the machine's memory; thread binding for TP; the site's engine env).
        os.environ.update(engine.server_env(self.job))
        llm = make_llm(self.job)
        self.mark_ready(time.monotonic() - self.t_start)
        self.check_stop()
        self.exp.set_phase("sweeping", "starting")
        try:
            return run_offline_sweep(self.job, self.exp, self.stop, llm=llm, deadline=self.env.deadline())
        except PointFailed as exc:
            raise Failed(f"sweep failed: {one_line(exc)}") from exc

    def main(self) -> int:
        try:
            return self.steps()
        except InterruptedError:
            if self.stopper.walltime:
                raise Walltime(f"stopped while {self.exp.phase().get('phase', 'starting')}") from None
            raise

    def steps(self) -> int:
        exp, job, env = self.exp, self.job, self.env
        exp.set_phase("starting", f"job {env.job_id} on {len(env.nodes)} node(s)")
        node_ips = self.cluster()
        self.check_stop()
        self.prov = provenance.collect(job, env.nodes, node_ips, env.job_id)
        self.prov["driver_env"] = {"nodes": env.nodes, "head_ip": env.head_ip, "port_offset": env.port_offset,
                                   "ray_address": env.ray_address if job.site.ray.enabled else None}
        provenance.write(exp, self.prov)
        exp.set_phase("loading", f"{job.model.name} from {job.model_path}")
        self.t_start = time.monotonic()
        if job.mode == "offline":
            result = self.offline()
        else:
            self.mark_ready(self.engines(node_ips))
            self.check_stop()
            exp.set_phase("sweeping", "starting")
            result = self.sweep_servers()
        self.check_result(result)
        exp.set_phase("done", _summary(result))
        say(f"done: {_summary(result)}")
        return 0

    def check_result(self, result: SweepResult | None) -> None:
        """How a sweep that returned ended: a point refused for the walltime, cut short, or whole."""
        if result is not None and result.complete:
            return  # every point is in: an alarm or a signal after the last point changes nothing
        if result is not None and result.refused:
            raise Walltime(result.refused)
        if self.stopper.walltime:
            at = result.stopped_at if result is not None else None
            raise Walltime(f"stopped during point {at}, not written" if at else "stopped between points")
        self.check_stop()
        if result is not None and result.stopped:
            raise Failed("sweep stopped before its end")

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise InterruptedError(self.stopper.reason())

    def teardown(self) -> None:
        if self.servers:
            say(f"stopping {len(self.servers)} server(s)")
            engine.stop_servers(self.servers)
            _record_pgids(self.exp, self.env.job_id, [])


def _summary(result: SweepResult | None) -> str:
    if result is None:
        return "no sweep result"
    return f"{len(result.ran)} point(s) run of {result.total}, {result.failed_requests} failed request(s)"


def run_driver(exp_dir: Path) -> int:
    """Run one job's work inside the job; returns the process exit code."""
    exp = Experiment(Path(exp_dir).absolute())
    try:
        job = Job.load(exp.file(CONFIG))
        env = JobEnv.from_environ(job)
    except UserError as exc:
        exp.set_phase("failed", one_line(exc))
        raise
    stopper = Stopper().install(env.deadline())
    exp.mark_started()
    run = Run(exp, job, env, stopper)
    code = 1
    try:
        code = run.main()
    except Walltime as exc:
        code = WALLTIME_EXIT
        detail = f"walltime: {exc}; run `hpcbench submit --resume {exp.path}`"
        exp.set_phase("failed", detail)
        say(detail)
    except InterruptedError:
        code = stopper.exit_code
        exp.set_phase("failed", stopper.reason())
    except Failed as exc:
        code = stopper.exit_code if stopper.signum else 1
        exp.set_phase("failed", stopper.reason() if stopper.signum else str(exc))
        say(f"failed: {exc}")
    except UserError as exc:
        exp.set_phase("failed", one_line(exc))
        say(f"failed: {exc}")
        code = 2
    except BaseException as exc:  # anything else: still a one-line reason and a stopped engine
        exp.set_phase("failed", f"{type(exc).__name__}: {one_line(exc)}")
        traceback.print_exc()
        code = stopper.exit_code if stopper.signum else 1
    finally:
        run.teardown()
        stopper.restore()
    return code
