"""One Jinja environment for batch scripts: render(job) -> the text of job.sh.

Every value from a config reaches the script through a filter: `q` shell-quotes it (spaces, quotes,
$(...), backticks and newlines stay literal data), `directive` admits it into a scheduler header
line (#SBATCH/#PBS lines are parsed by sbatch/qsub, not by the shell, so they cannot be quoted:
control characters such as newlines, which would end the comment and start a command, are refused).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import jinja2

from hpcbench import __version__
from hpcbench.config.errors import UserError
from hpcbench.config.job import Job
from hpcbench.config.values import format_walltime, parse_walltime
from hpcbench.launchers import STEP_CPUS_TOKEN, node_prefix
from hpcbench.runtime.ray_paths import RAY_DIR_PREFIX

# Seconds the batch script needs after the driver ends: the exit record, then up to 10 s for the Ray
# daemons to stop. The driver ends this long before the walltime (HPCBENCH_TEARDOWN_S).
TEARDOWN_S = 20


SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def shell_quote(value: Any) -> str:
    """A bash word that means exactly value. Escaped double quotes rather than single quotes, so
    shellcheck does not take a literal `$(...)` for a forgotten expansion; $'...' for control characters."""
    if value is None or isinstance(value, jinja2.Undefined):
        raise UserError("a value rendered into the batch script is missing")
    text = str(value)
    if SAFE.fullmatch(text):
        return text
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        body = "".join({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t"}.get(ch) or
                       (f"\\x{ord(ch):02x}" if ord(ch) < 32 or ord(ch) == 127 else ch) for ch in text)
        return f"$'{body}'"
    return '"' + re.sub(r'([\\"$`])', r"\\\1", text) + '"'


def directive(value: Any) -> str:
    text = str(value)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise UserError(f"value {text!r} cannot go into a scheduler header: it holds a control character "
                        "(newline, tab, ...)")
    return text


def comment(value: Any) -> str:
    """Text for a `# ...` line: control characters would end the comment, so they are escaped."""
    return "".join(ch if ord(ch) >= 32 and ord(ch) != 127 else repr(ch)[1:-1] for ch in str(value))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("hpcbench.templates"))),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
        lstrip_blocks=True, autoescape=False,
        # Bash uses {# (as in ${#array[@]}), so Jinja comments take a spelling bash never does.
        comment_start_string="{%#", comment_end_string="#%}")
    env.filters["q"] = shell_quote
    env.filters["directive"] = directive
    env.filters["comment"] = comment
    return env


def render_job(job: Job) -> str:
    """The batch script for job, for its site's scheduler."""
    template = environment().get_template(f"{job.site.scheduler.kind}.sh.j2")
    walltime_s = parse_walltime(job.walltime)
    return template.render(job=job, site=job.site, plan=job.plan, version=__version__,
                           node_prefix=node_prefix(job.site.launcher, STEP_CPUS_TOKEN),
                           step_cpus_token=STEP_CPUS_TOKEN, header_cpus=job.site.header_cpus,
                           ray_dir_prefix=RAY_DIR_PREFIX,
                           teardown_s=TEARDOWN_S, walltime_s=walltime_s,
                           walltime_hms=format_walltime(walltime_s))
