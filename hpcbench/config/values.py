"""Checks for single values that reach a batch script, a path or a command line.

One function per kind of value, used by the site and sweep models and by the command-line flags alike,
so a value is refused the same way wherever it comes from. Each returns the value (normalised where
said) or raises ValueError with what was expected; the caller adds where the value came from.
No third-party imports: the command line's fast paths use these.
"""

from __future__ import annotations

import re

# Names that become path parts and scheduler job names (site, model, sweep, scenario names).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# What bash accepts as a variable name in `export NAME=...`.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Accounts, queues, partitions: scheduler words, never white space, quotes or shell syntax.
_SCHED_WORD = re.compile(r"[A-Za-z0-9._@:+-]+")


def positive_int(value: int, what: str = "value") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number of at least 1 (got {value!r})")
    return value


def safe_name(value: str, what: str = "name") -> str:
    """A name used as a folder and a job name: letters, digits, '.', '_', '+', '-'; no '/', '..' or spaces."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value or len(value) > 100:
        raise ValueError(f"{what} must be letters, digits, '.', '_', '+' or '-', start with a letter or digit, "
                         f"and have no '..' (got {value!r})")
    return value


def env_name(value: str) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ValueError(f"not a shell variable name (letters, digits, '_', not starting with a digit): {value!r}")
    return value


def scheduler_word(value: str, what: str = "value") -> str:
    """An account, queue or partition name as a scheduler header carries it."""
    if not isinstance(value, str) or not _SCHED_WORD.fullmatch(value):
        raise ValueError(f"{what} must be one word of letters, digits and . _ @ : + - (got {value!r})")
    return value


def non_empty(value: str, what: str = "value") -> str:
    """Refuse "" and white space: an unset shell variable must not fall back to a default."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is empty")
    return one_line(value, what)


def one_line(value: str, what: str = "value") -> str:
    """Text for one line of a scheduler header (which cannot be quoted): may be empty, holds no control
    character (a newline would end the header comment and start a command)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text (got {value!r})")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} contains a control character (got {value!r})")
    return value


WALLTIME_FORMS = "HH:MM:SS, MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def parse_walltime(text: str) -> int:
    """A walltime in the forms Slurm's --time and PBS's walltime both read the same way -> seconds.

    A bare number is refused: Slurm reads "30" as 30 minutes, PBS as 30 seconds."""
    body = str(text).strip()
    days, has_days = 0, "-" in body
    if has_days:
        d, body = body.split("-", 1)
        if not (d.isascii() and d.isdecimal()):
            raise ValueError(f"walltime must look like {WALLTIME_FORMS} (got {text!r})")
        days = int(d)
    parts = body.split(":")
    # isdecimal and isascii: "٣" or "²" pass isdigit but no scheduler reads them.
    if (not all(p.isascii() and p.isdecimal() for p in parts) or len(parts) > 3
            or (not has_days and len(parts) == 1)):
        hint = (f"; a bare number means minutes to Slurm and seconds to PBS: write 00:{int(body):02d}:00 "
                f"for {body} minutes" if body.isascii() and body.isdecimal() and not has_days
                and 0 < int(body) < 60 else "")
        raise ValueError(f"walltime must look like {WALLTIME_FORMS} (got {text!r}){hint}")
    nums = [int(p) for p in parts]
    if has_days:  # D-HH, D-HH:MM, D-HH:MM:SS
        nums += [0] * (3 - len(nums))
    else:     # MM:SS, HH:MM:SS
        nums = [0] * (3 - len(nums)) + nums
    h, m, s = nums
    if m >= 60 or s >= 60 or (has_days and h >= 24):
        raise ValueError(f"walltime {text!r} is out of range (minutes and seconds below 60"
                         + (", hours below 24 after a day count)" if has_days else ")"))
    total = days * 86400 + h * 3600 + m * 60 + s
    if total <= 0:
        raise ValueError(f"walltime must be longer than zero (got {text!r})")
    return total


def format_walltime(seconds: int) -> str:
    """HH:MM:SS (hours may pass 24), which PBS and Slurm read alike."""
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"
