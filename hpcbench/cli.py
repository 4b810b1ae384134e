"""hpcbench's command line: parse, call one function, print. No logic lives here.

Heavy libraries (pandas, ray, vllm, torch, matplotlib) are imported only inside the subcommands that
need them, so `--help`, `sites`, `models`, `plan` and `status` stay fast on slow login-node filesystems.

Every mistake a user can make ends in one line on stderr and exit status 2: argparse's refusals (no usage
block: `--help` shows it), the checks of hpcbench.config.values on each flag's value, and UserError
from the commands. Output cut short by a closed pipe (`hpcbench sites | head -1`) ends quietly with
exit status 141, as git and ls do (128 + SIGPIPE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from hpcbench import __version__
from hpcbench.config import values
from hpcbench.config.errors import UserError
from hpcbench.engine_config import engine_dtype, kv_cache_dtype

EPILOG = """\
typical use:
  hpcbench plan --site slurm-h100 --model 70b --max-model-len 128000
  hpcbench submit --site aurora --model 405b --account MYPROJ --dry-run
  hpcbench submit --site local --model tiny --sweep smoke --wait
  hpcbench bench --endpoint http://127.0.0.1:8000 --model tiny --sweep smoke
  hpcbench status
  hpcbench collect -o report/

sites: built-in profiles (hpcbench sites), or your own YAML via --site ./mysite.yaml, ./sites/NAME.yaml
or ~/.config/hpcbench/sites/NAME.yaml; a profile may `extends: aurora`. See docs/sites.md.
`hpcbench COMMAND --help` shows each command's options, defaults and examples.
"""

EXIT_USER_ERROR = 2
HIDDEN_COMMANDS = ("driver",)  # run by the batch script inside the job, not by users
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program killed by SIGPIPE (git, ls)

# The optional-dependencies of pyproject.toml, by the modules they provide; a command missing one of its
# extra's modules names the extra to install instead of failing with a traceback.
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("aiohttp", "numpy", "tqdm"),
    "report": ("pandas", "matplotlib"),
    "model": ("numpy", "safetensors", "tokenizers"),
}


def printable(text: object) -> str:
    """text with control and other non-printable characters escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class Parser(argparse.ArgumentParser):
    """argparse, but a refusal is one line: `hpcbench plan: error: argument --tp: ...`."""

    def error(self, message: str) -> NoReturn:
        for name in HIDDEN_COMMANDS:  # argparse lists every choice when refusing an unknown command
            message = message.replace(f", {name!r}", "")
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {printable(message)} (see '{self.prog} --help')\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse drops write errors; a closed pipe must reach main, which ends as for every command.
        if message:
            (file or sys.stderr).write(message)


# --- flag values: the checks of hpcbench.config.values, so a flag is refused as a site file's key is ---

def _flag(check: Callable[[Any, str], Any], convert: Callable[[str], Any] | None = None) -> Callable[[str], Any]:
    """An argparse type: argparse names the flag, the check says what was expected and what was given."""

    def parse(text: str) -> Any:
        value: Any = text
        if convert is not None:
            try:
                value = convert(text)
            except ValueError:
                pass  # not convertible: the check refuses the text as it was given
        try:
            return check(value, "value")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _walltime(value: str, what: str) -> str:
    values.parse_walltime(values.non_empty(value, what))
    return value


COUNT = _flag(values.positive_int, int)
TEXT = _flag(values.non_empty)
PATH = _flag(lambda v, what: Path(values.non_empty(v, what)))
WORD = _flag(lambda v, what: values.scheduler_word(values.non_empty(v, what), what))
WALLTIME = _flag(_walltime)
DTYPE = _flag(lambda v, what: engine_dtype(values.non_empty(v, what), what))
KV_DTYPE = _flag(lambda v, what: kv_cache_dtype(values.non_empty(v, what), what))


# --- commands ---

def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def cmd_sites(args: argparse.Namespace) -> int:
    from hpcbench.config.site import list_sites

    sites, broken = list_sites()
    rows = [{"name": name, "scheduler": s.scheduler.kind, "launcher": s.launcher,
             "accelerator": s.node.accelerator, "per_node": s.node.accelerators,
             "gib_each": f"{s.node.memory_gib:g}", "max_nodes": s.scheduler.max_nodes, "file": str(path)}
            for name, path, s in sites]
    for error in broken:  # one broken profile must not hide the others
        print(f"hpcbench: warning: skipped {printable(error)}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["name", "scheduler", "launcher", "accelerator", "per_node", "gib_each", "max_nodes"])
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from hpcbench.config.model import load_models
    from hpcbench.model_size import size

    rows = []
    for m in load_models():
        n = size(m)
        kind = "+".join(k for k, on in (("MoE", m.experts), ("MLA", m.mla), ("window", m.window_layers)) if on)
        rows.append({"name": m.name, "aliases": ",".join(m.aliases), "hf_id": m.hf_id,
                     "params_b": float(f"{n.total / 1e9:.6g}"), "active_b": float(f"{n.active / 1e9:.6g}"),
                     "kind": kind or "dense", "weights": m.quantization or m.dtype, "layers": m.layers,
                     "heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim, "max_context": m.max_context})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["name", "aliases", "params_b", "active_b", "kind", "weights", "layers", "kv_heads",
                            "max_context"])
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from hpcbench.plan import DEFAULT_MODEL, DEFAULT_SITE, plan_for
    from hpcbench.plan_report import format_plan

    p = plan_for(args.site or DEFAULT_SITE, args.model or DEFAULT_MODEL, args.sweep, model_path=args.model_path,
                 max_model_len=args.max_model_len, dtype=args.dtype, kv_cache=args.kv_cache_dtype,
                 fit_load=args.fit_load, mode=args.mode, nodes=args.nodes, tp=args.tp, concurrency=args.concurrency)
    print(json.dumps(p.to_dict(), indent=2) if args.json else format_plan(p))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from hpcbench.submit import submit

    return submit(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from hpcbench.bench.endpoint import bench_command

    return bench_command(args)


def cmd_status(args: argparse.Namespace) -> int:
    from hpcbench.status import status

    return status(args)


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpcbench.status import cancel

    return cancel(args)


def cmd_collect(args: argparse.Namespace) -> int:
    from hpcbench.report.collect import collect_command

    return collect_command(args)


def cmd_driver(args: argparse.Namespace) -> int:
    from hpcbench.experiment import CONFIG, Experiment

    exp = Experiment(Path(args.experiment).absolute())
    if not exp.file(CONFIG).is_file():  # the driver records failures in the directory: never create one
        raise UserError(f"{args.experiment} is not an experiment directory (no {CONFIG})")
    try:
        import aiohttp  # noqa: F401  # the sweep's client: missing, the job fails now, saying which extra
    except ModuleNotFoundError as exc:
        exp.set_phase("failed", _missing_extra(args, exc) or str(exc))
        raise
    from hpcbench.runtime.driver import run_driver

    return run_driver(exp.path)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from hpcbench.config.job import tiny_model_dir
    from hpcbench.runtime.tiny_model import make_tiny_model

    print(make_tiny_model(args.dir or tiny_model_dir(), force=args.force))
    return 0


# --- the parser ---

PLAN_EXAMPLES = """\
examples:
  hpcbench plan --site slurm-h100 --model 70b --max-model-len 128000
  hpcbench plan --site aurora --model 405b --json
  hpcbench plan --site slurm-h100 --model 70b --mode replicas --nodes 2 --max-model-len 8192
  hpcbench plan --site slurm-h100 --model ./Qwen2.5-72B-Instruct     # a folder with a config.json
  hpcbench plan --site slurm-h100 --model 70b --sweep nvidia-usecases --fit-load

Without --max-model-len the engine is sized for the longest context the sweep needs, and the load is the
sweep's heaviest point: `plan --sweep S` shows the layout `submit --sweep S` runs.
"""

SUBMIT_EXAMPLES = """\
examples:
  hpcbench submit --site aurora --model 405b --account MYPROJ --dry-run   # read the script first
  hpcbench submit --site local --model tiny --sweep smoke --wait
  hpcbench submit --resume hpcbench-runs/aurora/llama-3.1-405b-instruct/20250101T000000Z-abc123

The experiment directory is <root>/<site>/<model>/<UTC timestamp>-<id>/ and holds job.sh,
config.yaml, submit.json, logs/ and results/. --dry-run prints the script only and creates nothing.
"""

BENCH_EXAMPLES = """\
examples:
  hpcbench bench --endpoint http://127.0.0.1:8000 --model tiny --sweep smoke
  hpcbench bench --endpoint http://gpu01:8000 --endpoint http://gpu02:8000 --model 70b \\
      --site slurm-h100 --gpus 16 --nodes 2 --tp 8 --sweep aurora-fom
  hpcbench bench --resume hpcbench-runs/local/tiny/20250101T000000Z-abc123

The sweep runs in this process against servers started elsewhere (requests go to the endpoint with
the fewest in flight) and writes an experiment directory as submit does: status, collect and --resume
treat it like any other. The servers are asked what they serve (/v1/models: model, max-model-len;
/version: engine version); what they cannot say (GPUs, nodes, TP, PP, dtype) is what you pass, else it
stays empty in the results. Servers that need a key get $OPENAI_API_KEY as a bearer token.
Ctrl-C stops at once, keeping the points done; --resume runs the rest.
"""

COLLECT_EXAMPLES = """\
examples:
  hpcbench collect -o report/
  hpcbench collect runs/ --site aurora --format csv,md --no-plots
  hpcbench collect --compare runs/aurora/405b/EXP_A runs/polaris/405b/EXP_B -o cmp/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hpcbench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="LLM inference benchmarks on HPC clusters: plan how a model fits a site, render and "
                    "submit one batch job (Ray + vLLM + the FOM sweep), track it, collect the results.")
    parser.add_argument("--version", action="version", version=f"hpcbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str | None, **kw: Any) -> Parser:
        # Without help= a subcommand works but is not listed (argparse would print ==SUPPRESS==).
        listed = {"help": help, "description": help} if help else {}
        p = sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **listed, **kw)
        p.set_defaults(func=func)
        return p

    p = add("sites", cmd_sites, "list the site profiles hpcbench can find")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("models", cmd_models, "list the model catalog")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    def plan_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--site", type=TEXT, help="site name or YAML path (default: local)")
        p.add_argument("--model", type=TEXT,
                       help="catalog name or alias (hpcbench models), a Hugging Face id in the site's models_dir "
                            "or cache, or a folder with a config.json (default: tiny)")
        p.add_argument("--model-path", type=TEXT,
                       help="where the engine loads a catalog model from: a folder or HF id; its config.json "
                            "must match the catalog (default: the site's models_dir, else the HF id)")
        p.add_argument("--sweep", type=TEXT, help="sweep name or YAML path (default: smoke on CPU sites, "
                                                  "aurora-fom elsewhere)")
        p.add_argument("--mode", choices=["serve", "replicas", "offline"],
                       help="serve: one engine over the nodes; replicas: one engine per node or GPU group; "
                            "offline: vllm.LLM in-process (default: the sweep's, else serve)")
        p.add_argument("--nodes", type=COUNT, help="nodes to use (default: the fewest that fit)")
        p.add_argument("--tp", type=COUNT, help="tensor parallel size (default: chosen by the planner)")
        p.add_argument("--max-model-len", type=COUNT, metavar="TOKENS",
                       help="context length the engine must hold (default: the longest the sweep needs)")
        p.add_argument("--dtype", type=DTYPE, help="vLLM's --dtype: auto, bfloat16 (bf16), float16 (fp16), "
                                                   "float32 (fp32); quantized weights come from the checkpoint "
                                                   "(default: the site's)")
        p.add_argument("--kv-cache-dtype", type=KV_DTYPE, metavar="DTYPE",
                       help="vLLM's --kv-cache-dtype: auto (as --dtype), fp8, fp8_e4m3, fp8_e5m2, bfloat16, "
                            "float16 (default: the site's, else auto)")
        p.add_argument("--fit-load", action="store_true",
                       help="add nodes (or TP, for replicas) until the KV cache holds the sweep's heaviest "
                            "point; by default the layout holds full-length sequences and a heavier load "
                            "queues in the engine, as the plan says")

    p = add("plan", cmd_plan, "show how a model fits a site: memory arithmetic and the chosen TP/PP/nodes",
            epilog=PLAN_EXAMPLES)
    plan_args(p)
    p.add_argument("--concurrency", type=COUNT,
                   help="size the load as this many full-length sequences at once (default: the sweep's "
                        "heaviest point, as submit does)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("submit", cmd_submit, "plan, render the batch script, create the experiment directory, submit",
            epilog=SUBMIT_EXAMPLES)
    plan_args(p)
    p.add_argument("--account", type=WORD, help="project/account to charge (PBS -A, Slurm --account; "
                                                "default: the site's)")
    p.add_argument("--queue", type=WORD, help="PBS queue or Slurm partition (default: the site's, or the first "
                                              "row of its queue table that takes the plan's nodes and walltime)")
    p.add_argument("--walltime", type=WALLTIME,
                   help="HH:MM:SS, MM:SS or D-HH[:MM[:SS]] as Slurm reads them (default: the site's); the "
                        "driver stops in time and --resume runs the rest")
    p.add_argument("--engine-timeout", type=COUNT, metavar="SECONDS",
                   help="seconds to wait for the engine to be ready (default: the site's, else from the "
                        "model's size)")
    p.add_argument("--root", type=PATH, help="experiments root (default: $HPCBENCH_ROOT or ./hpcbench-runs)")
    p.add_argument("--resume", type=TEXT, metavar="EXP",
                   help="re-run an experiment directory: only missing points run")
    p.add_argument("--dry-run", action="store_true", help="print the script and where it would go; create and "
                                                          "submit nothing")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends, showing its progress")
    p.set_defaults(extra="model")  # the local site makes the tiny model before its first job

    p = add("bench", cmd_bench, "run a sweep against OpenAI-compatible servers already running (any engine)",
            epilog=BENCH_EXAMPLES)
    p.add_argument("--endpoint", type=TEXT, action="append", metavar="URL",
                   help="a server's base URL, e.g. http://HOST:8000; repeat for several replicas of one deployment")
    p.add_argument("--model", type=TEXT, help="what the servers run: catalog name or alias, Hugging Face id, or "
                                              "a folder with a config.json (required)")
    p.add_argument("--tokenizer", type=TEXT, metavar="DIR",
                   help="the model's folder here (config.json and tokenizer), for a catalog model whose weights "
                        "are elsewhere; chat scenarios need it (default: as submit finds the weights)")
    p.add_argument("--served-model", type=TEXT, metavar="NAME",
                   help="the model name to send (default: the first /v1/models entry of the first server)")
    p.add_argument("--sweep", type=TEXT, help="sweep name or YAML path (default: smoke on CPU sites, aurora-fom "
                                              "elsewhere)")
    p.add_argument("--site", type=TEXT, help="the site the servers run on, for the results' site and accelerator "
                                             "(default: local)")
    p.add_argument("--gpus", type=COUNT, help="accelerators behind all the endpoints together: per-GPU figures "
                                              "divide by it (default: none given, per-GPU figures empty)")
    p.add_argument("--nodes", type=COUNT, help="nodes the servers use (recorded; default: not known)")
    p.add_argument("--tp", type=COUNT, help="tensor parallel size of each server (recorded; default: not known)")
    p.add_argument("--pp", type=COUNT, help="pipeline parallel size of each server (recorded; default: not known)")
    p.add_argument("--dtype", type=DTYPE, help="the servers' dtype (recorded; default: not known)")
    p.add_argument("--max-model-len", type=COUNT, metavar="TOKENS",
                   help="the servers' context, when they do not say it at /v1/models (vLLM does)")
    p.add_argument("--root", type=PATH, help="experiments root (default: $HPCBENCH_ROOT or ./hpcbench-runs)")
    p.add_argument("--resume", type=TEXT, metavar="EXP",
                   help="run the points an earlier bench did not (with --endpoint: where the servers are now)")
    p.set_defaults(extra="bench")

    p = add("status", cmd_status, "every tracked job: state, elapsed time, progress",
            epilog="examples:\n  hpcbench status\n  hpcbench status --root runs/ --root old-runs/ --json\n")
    p.add_argument("--root", type=PATH, action="append",
                   help="experiments root, repeatable (default: $HPCBENCH_ROOT or ./hpcbench-runs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("cancel", cmd_cancel, "cancel a job by experiment directory or job id",
            epilog="examples:\n  hpcbench cancel hpcbench-runs/aurora/llama-3.1-8b-instruct/20250101T000000Z-abc123\n"
                   "  hpcbench cancel 123456\n")
    p.add_argument("target", type=TEXT, help="experiment directory or scheduler job id")
    p.add_argument("--root", type=PATH, action="append",
                   help="experiments root to search for a job id, repeatable (default: $HPCBENCH_ROOT or "
                        "./hpcbench-runs)")

    p = add("collect", cmd_collect, "merge experiments' results into one table and a report", epilog=COLLECT_EXAMPLES)
    p.add_argument("roots", nargs="*", type=PATH,
                   help="experiment roots or directories (default: $HPCBENCH_ROOT or ./hpcbench-runs)")
    p.add_argument("-o", "--out", type=PATH, default=Path("hpcbench-report"),
                   help="output folder (default: hpcbench-report)")
    p.add_argument("--format", type=TEXT, default="csv,md,html",
                   help="comma list of csv, parquet, md, html (default: csv,md,html)")
    p.add_argument("--site", type=TEXT, action="append", help="only these sites (repeatable; default: all)")
    p.add_argument("--model", type=TEXT, action="append", help="only these models (repeatable; default: all)")
    p.add_argument("--compare", nargs=2, type=TEXT, metavar=("A", "B"),
                   help="two experiments or sites side by side")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(extra="report")

    p = add("make-tiny-model", cmd_make_tiny_model, "write the tiny random-weight Llama used by tests and the "
            "local quickstart (no downloads)",
            epilog="examples:\n  hpcbench make-tiny-model\n  hpcbench make-tiny-model ./models/tiny --force\n")
    p.add_argument("dir", nargs="?", type=PATH,
                   help="target folder (default: $HPCBENCH_MODELS/tiny, else ~/.cache/hpcbench/models/tiny)")
    p.add_argument("--force", action="store_true", help="overwrite an existing model")
    p.set_defaults(extra="model")

    p = add("driver", cmd_driver, None)  # called by the batch script inside the job
    p.add_argument("experiment", type=TEXT)
    p.set_defaults(extra="bench")
    return parser


def _missing_extra(args: argparse.Namespace, exc: ModuleNotFoundError) -> str | None:
    """The message for a module of the command's extra that is not installed; None for any other module
    (a real bug, which keeps its traceback)."""
    extra = getattr(args, "extra", None)
    module = (exc.name or "").partition(".")[0]
    if extra is None or module not in EXTRAS[extra]:
        return None
    return (f"{args.command} needs the '{extra}' extra (no module named {module!r}): "
            f"pip install 'hpcbench[{extra}]'")


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help and --version print, then exit: flush so a closed pipe shows here
        sys.stdout.flush()
        raise
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside main's handler, not at interpreter exit
        return code
    except UserError as exc:
        return _fail(str(exc), exc.exit_code)
    except ModuleNotFoundError as exc:
        missing = _missing_extra(args, exc)
        if missing is None:
            raise
        return _fail(missing, EXIT_USER_ERROR)
    except BrokenPipeError:
        raise
    except OSError as exc:  # the system refused a path given (name too long, no permission, not a folder...)
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc), EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("hpcbench: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, code: int) -> int:
    print(f"hpcbench: error: {printable(message)}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again (as the Python docs
    on SIGPIPE advise)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by something without a descriptor
        pass


def main(argv: list[str] | None = None) -> int:
    if sys.stdout is None:  # started with stdout closed (`>&-`): the output goes nowhere
        sys.stdout = open(os.devnull, "w")
    try:
        return _run(argv)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as git and ls do
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # the output itself could not be written (a full disk)
        _silence_stdout()
        return _fail(f"cannot write the output: {exc.strerror or exc}", EXIT_USER_ERROR)


if __name__ == "__main__":
    sys.exit(main())
