"""hpcbench's command line: parse, call one function, print. No logic lives here.

Heavy libraries (pandas, ray, vllm, torch, matplotlib) are imported only inside the subcommands that
need them, so `--help`, `sites`, `models`, `plan` and `status` stay fast on slow login-node filesystems.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from hpcbench import __version__
from hpcbench.config.errors import UserError

EPILOG = """\
typical use:
  hpcbench plan --site slurm-h100 --model 70b --max-model-len 128000
  hpcbench submit --site aurora --model 405b --account MYPROJ --dry-run
  hpcbench submit --site local --model tiny --sweep smoke --wait
  hpcbench status
  hpcbench collect -o report/

sites: built-in profiles (hpcbench sites), or your own YAML via --site ./mysite.yaml, ./sites/NAME.yaml
or ~/.config/hpcbench/sites/NAME.yaml; a profile may `extends: aurora`. See docs/sites.md.
"""


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def cmd_sites(args: argparse.Namespace) -> int:
    from hpcbench.config.site import load_site, site_files

    rows = []
    for name, path in sorted(site_files().items()):
        s = load_site(str(path))
        rows.append({"name": name, "scheduler": s.scheduler.kind, "launcher": s.launcher,
                     "accelerator": s.node.accelerator, "per_node": s.node.accelerators,
                     "gib_each": f"{s.node.memory_gib:g}", "max_nodes": s.scheduler.max_nodes,
                     "file": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["name", "scheduler", "launcher", "accelerator", "per_node", "gib_each", "max_nodes"])
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from hpcbench.config.model import load_models

    rows = [{"name": m.name, "aliases": ",".join(m.aliases), "hf_id": m.hf_id, "params_b": f"{m.params_b:g}",
             "layers": m.layers, "heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim,
             "max_context": m.max_context} for m in load_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["name", "aliases", "params_b", "layers", "heads", "kv_heads", "head_dim", "max_context"])
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from hpcbench.config import load_site, resolve_model
    from hpcbench.plan import plan
    from hpcbench.plan_report import format_plan

    p = plan(resolve_model(args.model or "tiny"), load_site(args.site or "local"), max_model_len=args.max_model_len,
             dtype=args.dtype, mode=args.mode, nodes=args.nodes, tp=args.tp, concurrency=args.concurrency)
    print(json.dumps(p.to_dict(), indent=2) if args.json else format_plan(p))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from hpcbench.submit import submit

    return submit(args)


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
    from hpcbench.runtime.driver import run_driver

    return run_driver(Path(args.experiment))


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from hpcbench.config.job import tiny_model_dir
    from hpcbench.runtime.tiny_model import make_tiny_model

    path = make_tiny_model(Path(args.dir) if args.dir else tiny_model_dir(), force=args.force)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcbench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="LLM inference benchmarks on HPC clusters: plan how a model fits a site, render and "
                    "submit one batch job (Ray + vLLM + the FOM sweep), track it, collect the results.")
    parser.add_argument("--version", action="version", version=f"hpcbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(func=func)
        return p

    p = add("sites", cmd_sites, "list the site profiles hpcbench can find")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("models", cmd_models, "list the model catalog")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    def plan_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--site", help="site name or YAML path (default: local)")
        p.add_argument("--model", help="catalog name or alias, e.g. 405b (default: tiny)")
        p.add_argument("--mode", choices=["serve", "replicas", "offline"], default=None,
                       help="serve: one engine over the nodes; replicas: one engine per node or GPU group; "
                            "offline: vllm.LLM in-process")
        p.add_argument("--nodes", type=int, help="nodes to use (default: the fewest that fit)")
        p.add_argument("--tp", type=int, help="tensor parallel size (default: chosen by the planner)")
        p.add_argument("--max-model-len", type=int, help="context length the engine must hold")
        p.add_argument("--dtype", help="weights dtype (default: the site's)")

    p = add("plan", cmd_plan, "show how a model fits a site: memory arithmetic and the chosen TP/PP/nodes")
    plan_args(p)
    p.add_argument("--concurrency", type=int, default=1,
                   help="full-length sequences the KV cache must hold at once (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(mode="serve")

    p = add("submit", cmd_submit, "plan, render the batch script, create the experiment directory, submit",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="The experiment directory is <root>/<site>/<model>/<UTC timestamp>-<id>/ and holds job.sh,\n"
                   "config.yaml, submit.json, logs/ and results/. --dry-run prints the script only.")
    plan_args(p)
    p.add_argument("--sweep", default=None, help="sweep name or YAML path (default: smoke on CPU sites, "
                                                 "aurora-fom elsewhere)")
    p.add_argument("--account", help="project/account to charge (PBS -A, Slurm --account)")
    p.add_argument("--queue", help="PBS queue or Slurm partition (default: the site's, or the first row of its "
                                   "queue table that takes the plan's nodes and walltime)")
    p.add_argument("--walltime", help="HH:MM:SS, MM:SS or D-HH[:MM[:SS]] as Slurm reads them (default: the "
                                      "site's); the driver stops in time and --resume runs the rest")
    p.add_argument("--model-path", help="local model folder or HF id to load instead of the catalog's")
    p.add_argument("--engine-timeout", type=int, help="seconds to wait for the engine to be ready")
    p.add_argument("--root", type=Path, help="experiments root (default: $HPCBENCH_ROOT or ./hpcbench-runs)")
    p.add_argument("--resume", metavar="EXP", help="re-run an experiment directory: only missing points run")
    p.add_argument("--dry-run", action="store_true", help="print the script and where it would go; submit nothing")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends, showing its progress")

    p = add("status", cmd_status, "every tracked job: state, elapsed time, progress")
    p.add_argument("--root", type=Path, action="append", help="experiments root (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("cancel", cmd_cancel, "cancel a job by experiment directory or job id")
    p.add_argument("target", help="experiment directory or scheduler job id")
    p.add_argument("--root", type=Path, action="append", help="experiments root (repeatable)")

    p = add("collect", cmd_collect, "merge experiments' results into one table and a report")
    p.add_argument("roots", nargs="*", type=Path, help="experiment roots or directories (default: the root)")
    p.add_argument("-o", "--out", type=Path, default=Path("hpcbench-report"), help="output folder")
    p.add_argument("--format", default="csv,md,html", help="comma list of csv, parquet, md, html")
    p.add_argument("--site", action="append", help="only these sites (repeatable)")
    p.add_argument("--model", action="append", help="only these models (repeatable)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two experiments or sites side by side")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    p = add("make-tiny-model", cmd_make_tiny_model, "write the tiny random-weight Llama used by tests and the "
            "local quickstart (no downloads)")
    p.add_argument("dir", nargs="?", help="target folder (default: the tiny model's catalog location)")
    p.add_argument("--force", action="store_true", help="overwrite an existing model")

    p = sub.add_parser("driver", help=argparse.SUPPRESS)  # called by the batch script inside the job
    p.add_argument("experiment")
    p.set_defaults(func=cmd_driver)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except UserError as exc:
        print(f"hpcbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpcbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
