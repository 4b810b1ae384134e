"""Sweeps: named lists of scenarios, each expanding into sweep points (one row of results each).

A scenario's input_len, output_len, concurrency and request_rate may each be one value or a list;
a scenario expands to their cartesian product. Closed loop (concurrency) and open loop
(request_rate) points can both come from one scenario.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from hpcbench.config.errors import ConfigError
from hpcbench.config.loading import (FieldError, NonNegativeInt, PositiveFloat, PositiveInt, Strict, check, is_yaml_path,
                                     name_from_file, read_yaml, validate)
from hpcbench.config.values import safe_name

# One value or a non-empty list of them.
IntList = PositiveInt | Annotated[list[PositiveInt], msgspec.Meta(min_length=1)]
RateList = PositiveFloat | Annotated[list[PositiveFloat], msgspec.Meta(min_length=1)]


def _as_list(v: int | float | list | None) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, list) else [v]


class SLO(Strict, kw_only=True):
    ttft_ms: PositiveFloat | None = None
    tpot_ms: PositiveFloat | None = None
    e2el_ms: PositiveFloat | None = None

    def describe(self) -> str:
        return ";".join(f"{k}<={v:g}" for k, v in msgspec.structs.asdict(self).items() if v is not None)


class Scenario(Strict, kw_only=True):
    name: str
    description: str = ""
    fom: Literal["FOM1", "FOM2", "FOM3"] | None = None
    api: Literal["completions", "chat", "offline"] = "completions"
    input_len: IntList
    output_len: IntList
    concurrency: IntList | None = None  # closed loop: requests in flight
    request_rate: RateList | None = None  # open loop: requests/s (.inf: all at once)
    burstiness: PositiveFloat = 1.0  # gamma shape for open loop; 1 = Poisson
    num_requests: PositiveInt | None = None  # default: 4 x concurrency, at least 8
    warmup: NonNegativeInt = 2  # requests sent first and left out of the results
    stream: bool = True
    request_timeout_s: PositiveFloat = 600.0
    max_model_len: PositiveInt | None = None  # the engine needs at least this context
    slo: SLO = msgspec.field(default_factory=SLO)

    def __post_init__(self) -> None:
        check("name", safe_name, self.name, "scenario name")
        if self.concurrency is None and self.request_rate is None:
            self.concurrency = 1
        if self.api == "offline" and self.request_rate is not None:
            raise FieldError("request_rate", "offline scenarios take concurrency (the batch size), not request_rate")

    def needed_context(self) -> int:
        longest = max(_as_list(self.input_len)) + max(_as_list(self.output_len))
        return max(longest, self.max_model_len or 0)

    def points(self, sweep: str) -> list["SweepPoint"]:
        out = []
        for i, o in itertools.product(_as_list(self.input_len), _as_list(self.output_len)):
            for c in _as_list(self.concurrency):
                n = self.num_requests or (c if self.api == "offline" else max(4 * c, 8))
                out.append(SweepPoint(sweep, self, i, o, concurrency=c, request_rate=None, num_requests=n))
            for r in _as_list(self.request_rate):
                n = self.num_requests or 32
                out.append(SweepPoint(sweep, self, i, o, concurrency=None, request_rate=float(r),
                                      num_requests=n))
        return out


@dataclass(frozen=True)
class SweepPoint:
    sweep: str
    scenario: Scenario
    input_len: int
    output_len: int
    concurrency: int | None
    request_rate: float | None
    num_requests: int

    @property
    def point_id(self) -> str:
        """Stable across runs: resume skips the ids already in results/points.csv."""
        load = f"c{self.concurrency}" if self.concurrency is not None else (
            "rinf" if self.request_rate is None or math.isinf(self.request_rate) else f"r{self.request_rate:g}")
        return f"{self.scenario.name}_in{self.input_len}_out{self.output_len}_{load}_n{self.num_requests}"


class Sweep(Strict, kw_only=True):
    name: str
    description: str = ""
    mode: Literal["serve", "replicas", "offline"] | None = None  # suggested mode
    scenarios: Annotated[list[Scenario], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        check("name", safe_name, self.name, "sweep name")
        names = [s.name for s in self.scenarios]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise FieldError(f"scenarios.{i}.name", f"scenario names must be unique: {name!r} is used twice")

    def points(self) -> list[SweepPoint]:
        return [p for s in self.scenarios for p in s.points(self.name)]

    def needed_context(self) -> int:
        return max(s.needed_context() for s in self.scenarios)


def builtin_sweeps() -> dict[str, Path]:
    root = resources.files("hpcbench.catalog") / "sweeps"
    return {Path(e.name).stem: Path(str(e)) for e in root.iterdir() if e.name.endswith(".yaml")}


def sweep_files() -> dict[str, Path]:
    found = dict(builtin_sweeps())
    user = Path.cwd() / "sweeps"
    if user.is_dir():
        found.update({p.stem: p for p in sorted(user.glob("*.yaml"))})
    return found


def sweep_names() -> list[str]:
    return sorted(sweep_files())


def load_sweep(name_or_path: str) -> Sweep:
    path = Path(name_or_path)
    if not is_yaml_path(name_or_path):
        files = sweep_files()
        if name_or_path not in files:
            raise ConfigError(None, "--sweep", f"unknown sweep {name_or_path!r}; known sweeps: "
                              f"{', '.join(sorted(files))}")
        path = files[name_or_path]
    elif not path.is_file():
        raise ConfigError(path, "", "no such sweep file")
    data = read_yaml(path)
    if "name" not in data:  # named after its file
        data["name"] = name_from_file(path, "sweep name")
    return validate(Sweep, data, path)
