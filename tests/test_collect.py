"""`hpcbench collect`: merging points.csv files, re-run dedup, FOM sums, warnings, filters, compare, CLI."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hpcbench.report.collect import collect_command, collect_points
from hpcbench.report.compare import compare_points
from hpcbench.report.fom import fom_table
from hpcbench.report.synthetic import csv_text, point_row, sweep_rows, write_experiment
from hpcbench.results import POINT_COLUMNS

MODEL = "llama-8b"


def exp(root: Path, site: str, name: str, rows: list[dict], model: str = MODEL, **kw) -> Path:
    return write_experiment(root, site, model, name, rows, **kw)


def args(roots: list[Path], out: Path, **kw) -> argparse.Namespace:
    base = dict(roots=roots, out=out, format="csv", site=None, model=None, compare=None, no_plots=True)
    base.update(kw)
    return argparse.Namespace(**base)


def test_merges_every_row_with_its_provenance(tmp_path: Path) -> None:
    exp(tmp_path, "aurora", "20250101T000000Z-aaaaaa", sweep_rows("20250101T000000Z-aaaaaa", "aurora", MODEL, 20))
    exp(tmp_path, "polaris", "20250102T000000Z-bbbbbb", sweep_rows("20250102T000000Z-bbbbbb", "polaris", MODEL, 7))
    exp(tmp_path, "polaris", "20250103T000000Z-cccccc", sweep_rows("20250103T000000Z-cccccc", "polaris", "m2", 3),
        model="m2")
    got = collect_points([tmp_path])
    assert len(got.points) == 30
    assert got.warnings == []
    assert list(got.points.columns[: len(POINT_COLUMNS)]) == list(POINT_COLUMNS)
    assert got.points.groupby("experiment").size().to_dict() == {
        "20250101T000000Z-aaaaaa": 20, "20250102T000000Z-bbbbbb": 7, "20250103T000000Z-cccccc": 3}
    assert set(got.points["site"]) == {"aurora", "polaris"}
    assert got.points["experiment_path"].astype(str).str.endswith("20250103T000000Z-cccccc").sum() == 3


def test_resumed_rows_are_counted_once_keeping_the_last(tmp_path: Path) -> None:
    name = "20250101T000000Z-aaaaaa"
    rows = [point_row(name, "aurora", MODEL, "chat", "", c, 100.0 * c) for c in (1, 2, 4)]
    rerun = point_row(name, "aurora", MODEL, "chat", "", 2, 999.5)  # resume re-ran point chat-c2
    exp(tmp_path, "aurora", name, rows + [rerun, point_row(name, "aurora", MODEL, "chat", "", 8, 800.0)])
    got = collect_points([tmp_path])
    assert len(got.points) == 4 and got.duplicates_dropped == 1
    by_id = got.points.set_index("point_id")["total_throughput"]
    assert by_id["chat-c2"] == 999.5
    assert sorted(by_id.index) == ["chat-c1", "chat-c2", "chat-c4", "chat-c8"]


def test_fom_is_the_exact_sum_of_the_best_points_and_incomplete_when_a_part_is_missing(tmp_path: Path) -> None:
    n = "20250101T000000Z-aaaaaa"
    rows = [
        point_row(n, "aurora", MODEL, "fom1", "FOM1", 1, 1234.5678, nodes=2, gpus=24),
        point_row(n, "aurora", MODEL, "fom1", "FOM1", 8, 4321.1234, nodes=2, gpus=24),  # best FOM1
        point_row(n, "aurora", MODEL, "fom2", "FOM2", 8, 987.6543, nodes=2, gpus=24),
        point_row(n, "aurora", MODEL, "fom2", "FOM2", 16, 1111.0001, nodes=2, gpus=24),  # best FOM2
        point_row(n, "aurora", MODEL, "fom3", "FOM3", 4, 2222.2222, nodes=2, gpus=24),
        point_row(n, "aurora", MODEL, "chat", "", 64, 99999.0, nodes=2, gpus=24),  # untagged: not in FOM
    ]
    one_node = "20250102T000000Z-bbbbbb"
    partial = [point_row(one_node, "aurora", MODEL, s, f, 4, 500.0, nodes=1, gpus=12)
               for s, f in (("fom1", "FOM1"), ("fom3", "FOM3"))]
    exp(tmp_path, "aurora", n, rows)
    exp(tmp_path, "aurora", one_node, partial)
    ft = fom_table(collect_points([tmp_path]).points).set_index("nodes")
    full = ft.loc[2]
    assert (full["FOM1"], full["FOM2"], full["FOM3"]) == (4321.1234, 1111.0001, 2222.2222)
    assert full["FOM"] == 4321.1234 + 1111.0001 + 2222.2222
    assert full["status"] == "complete"
    part = ft.loc[1]
    assert math.isnan(part["FOM"]) and math.isnan(part["FOM2"])
    assert part["status"] == "incomplete: missing FOM2"


def test_fom_never_combines_points_of_another_sweep_mode_or_layout(tmp_path: Path) -> None:
    # One site, one model: a complete aurora-fom run (serve, TP8), a smoke run in replicas mode whose
    # points carry FOM tags and beat it, and an aurora-fom run on another vLLM version missing FOM3.
    fom, smoke, newer = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb", "20250103T000000Z-cccccc"
    exp(tmp_path, "aurora", fom, [point_row(fom, "aurora", MODEL, s, f, 8, v, gpus=8) for s, f, v in
                                  (("fom1", "FOM1", 100.0), ("fom2", "FOM2", 20.0), ("fom3", "FOM3", 3.0))])
    exp(tmp_path, "aurora", smoke, [point_row(smoke, "aurora", MODEL, "chat", f, c, 9000.0, gpus=8, sweep="smoke",
                                              mode="replicas", tp=1, replicas=8)
                                    for f, c in (("FOM1", 8), ("FOM2", 16))])
    exp(tmp_path, "aurora", newer, [point_row(newer, "aurora", MODEL, s, f, 8, 500.0, gpus=8,
                                              engine_version="0.11.0") for s, f in (("fom1", "FOM1"), ("fom2", "FOM2"))])
    ft = fom_table(collect_points([tmp_path]).points)
    assert len(ft) == 3
    by = {(r.sweep, r.mode, r.engine_version): r for r in ft.itertuples(index=False)}
    full = by[("aurora-fom", "serve", "0.0.0")]
    assert (full.FOM, full.status) == (123.0, "complete") and fom in full.best_points
    assert smoke not in full.best_points and newer not in full.best_points
    assert by[("smoke", "replicas", "0.0.0")].status == "incomplete: missing FOM3"
    part = by[("aurora-fom", "serve", "0.11.0")]
    assert math.isnan(part.FOM) and part.status == "incomplete: missing FOM3"  # not filled in from 0.0.0
    assert full.deployment == "serve vllm 0.0.0, TP8 PP1 x1, bfloat16, len 8192"
    assert by[("smoke", "replicas", "0.0.0")].deployment == "replicas vllm 0.0.0, TP1 PP1 x8, bfloat16, len 8192"


def test_scenarios_of_the_same_name_in_two_sweeps_stay_apart(tmp_path: Path) -> None:
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    exp(tmp_path, "aurora", a, [point_row(a, "aurora", MODEL, "chat", "", 4, 100.0, sweep="smoke")])
    exp(tmp_path, "aurora", b, [point_row(b, "aurora", MODEL, "chat", "", 4, 700.0, sweep="serving",
                                          input_len=2048)])
    assert collect_command(args([tmp_path], tmp_path / "out", format="md")) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    best = md.split("## Best throughput per scenario")[1].split("##")[0]
    lines = [ln for ln in best.splitlines() if ln.startswith("| aurora")]
    assert len(lines) == 2 and any("| smoke |" in ln for ln in lines) and any("| serving |" in ln for ln in lines)


def test_incomplete_fom_is_not_presented_as_a_sum_in_the_markdown(tmp_path: Path) -> None:
    n = "20250101T000000Z-aaaaaa"
    exp(tmp_path, "polaris", n, [point_row(n, "polaris", MODEL, "fom1", "FOM1", 1, 300.0),
                                 point_row(n, "polaris", MODEL, "fom2", "FOM2", 1, 40.0)])
    assert collect_command(args([tmp_path], tmp_path / "out", format="md")) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    fom_line = next(line for line in md.splitlines() if line.startswith("| polaris"))
    assert "| incomplete | incomplete: missing FOM3 |" in fom_line
    assert "340" not in fom_line


def test_truncated_last_line_warns_once_naming_the_file_and_keeps_the_rest(tmp_path: Path) -> None:
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    exp(tmp_path, "aurora", a, sweep_rows(a, "aurora", MODEL, 5))
    killed = exp(tmp_path, "aurora", b, sweep_rows(b, "aurora", MODEL, 6))
    points = killed / "results" / "points.csv"
    text = points.read_text()
    points.write_text(text[: text.rstrip("\n").rfind("\n") + 40])  # last row cut 40 characters in
    got = collect_points([tmp_path])
    assert len(got.points) == 5 + 5
    assert len(got.warnings) == 1
    assert str(points) in got.warnings[0] and "truncated" in got.warnings[0]


def test_missing_or_unreadable_points_csv_warns_and_the_rest_is_collected(tmp_path: Path) -> None:
    a = "20250101T000000Z-aaaaaa"
    exp(tmp_path, "aurora", a, sweep_rows(a, "aurora", MODEL, 4))
    running = tmp_path / "aurora" / MODEL / "20250102T000000Z-bbbbbb"
    (running / "results").mkdir(parents=True)
    (running / "config.yaml").write_text("site: aurora\n")
    odd = tmp_path / "aurora" / MODEL / "20250103T000000Z-cccccc"
    (odd / "results" / "points.csv").mkdir(parents=True)  # a directory where a file belongs
    (odd / "config.yaml").write_text("site: aurora\n")
    got = collect_points([tmp_path])
    assert len(got.points) == 4
    assert len(got.warnings) == 2
    assert any(str(running / "results" / "points.csv") in w and "missing" in w for w in got.warnings)
    assert any(str(odd / "results" / "points.csv") in w and "cannot be read" in w for w in got.warnings)


def test_older_column_set_warns_once_and_missing_columns_are_empty(tmp_path: Path) -> None:
    old_cols = [c for c in POINT_COLUMNS if c not in ("goodput", "slo", "achieved_request_rate", "fom")]
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    old = exp(tmp_path, "aurora", a, sweep_rows(a, "aurora", MODEL, 3), columns=old_cols)
    exp(tmp_path, "aurora", b, sweep_rows(b, "aurora", MODEL, 2))
    got = collect_points([tmp_path])
    assert len(got.points) == 5
    assert len(got.warnings) == 1 and str(old / "results" / "points.csv") in got.warnings[0]
    olds = got.points[got.points["experiment"] == a]
    assert olds["goodput"].isna().all() and olds["fom"].isna().all()
    assert got.points.loc[got.points["experiment"] == b, "goodput"].notna().all()


def test_malformed_row_in_the_middle_is_skipped_with_a_warning_naming_the_file(tmp_path: Path) -> None:
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    exp(tmp_path, "aurora", a, sweep_rows(a, "aurora", MODEL, 3))
    bad = exp(tmp_path, "aurora", b, sweep_rows(b, "aurora", MODEL, 3))
    lines = (bad / "results" / "points.csv").read_text().splitlines(keepends=True)
    lines.insert(2, "only,three,fields\n")
    (bad / "results" / "points.csv").write_text("".join(lines))
    got = collect_points([tmp_path])
    assert len(got.points) == 6
    assert len(got.warnings) == 1 and str(bad / "results" / "points.csv") in got.warnings[0]


def test_pandas_reader_gives_the_same_table_as_pyarrow(tmp_path: Path) -> None:
    for i, site in enumerate(("aurora", "polaris")):
        name = f"2025010{i + 1}T000000Z-aaaaa{i}"
        exp(tmp_path, site, name, sweep_rows(name, site, MODEL, 9))
    fast = collect_points([tmp_path], use_pyarrow=True).points
    plain = collect_points([tmp_path], use_pyarrow=False).points
    # Values compared as text; a missing value reads as None, NaN or <NA> depending on reader and pandas version.
    as_text = (lambda df: df.astype(object).where(df.notna(), "").astype(str))
    pd.testing.assert_frame_equal(as_text(fast), as_text(plain))


def test_site_and_model_filters(tmp_path: Path) -> None:
    for i, (site, model) in enumerate((("aurora", MODEL), ("polaris", MODEL), ("polaris", "m70"))):
        name = f"2025010{i + 1}T000000Z-aaaaa{i}"
        exp(tmp_path, site, name, sweep_rows(name, site, model, 4 + i), model=model)
    assert len(collect_points([tmp_path], sites=["polaris"]).points) == 5 + 6
    assert len(collect_points([tmp_path], sites=["polaris"], models=["m70"]).points) == 6
    assert set(collect_points([tmp_path], models=[MODEL]).points["site"]) == {"aurora", "polaris"}


def test_compare_two_sites_gives_ratios_b_over_a(tmp_path: Path) -> None:
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    exp(tmp_path, "aurora", a, [point_row(a, "aurora", MODEL, "chat", "", c, 100.0 * c, gpus=12,
                                            input_len=128, output_len=128) for c in (1, 2)])
    exp(tmp_path, "h100", b, [point_row(b, "h100", MODEL, "chat", "", c, 250.0 * c, gpus=8,
                                          input_len=128, output_len=128) for c in (1, 2, 4)])
    got = collect_points([tmp_path])
    pts = got.points
    cmp = compare_points(pts[pts["site"] == "aurora"], pts[pts["site"] == "h100"]).set_index("concurrency")
    assert cmp.loc[2.0, "total_throughput_B/A"] == pytest.approx(2.5)
    # per-GPU divides by each job's own GPU count: (250*2*0.5/8) / (100*2*0.5/12)
    assert cmp.loc[2.0, "per_gpu_output_B/A"] == pytest.approx(3.75)
    assert math.isnan(cmp.loc[4.0, "total_throughput_B/A"])  # only B ran concurrency 4
    out = tmp_path / "out"
    assert collect_command(args([tmp_path], out, compare=["aurora", "h100"])) == 0
    written = pd.read_csv(out / "compare.csv")
    assert len(written) == 3 and (out / "compare.md").read_text().count("\n| ") >= 3


def test_compare_two_experiment_directories_without_roots(tmp_path: Path, capsys) -> None:
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    da = exp(tmp_path, "aurora", a, [point_row(a, "aurora", MODEL, "chat", "", 4, 400.0)])
    db = exp(tmp_path, "aurora", b, [point_row(b, "aurora", MODEL, "chat", "", 4, 600.0)])
    assert collect_command(args([], tmp_path / "out", compare=[str(da), str(db)])) == 0
    assert "1.500" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "out" / "compare.csv")["total_throughput_B/A"].tolist() == [1.5]


def test_cli_writes_table_and_parquet(tmp_path: Path) -> None:
    name = "20250101T000000Z-aaaaaa"
    exp(tmp_path / "runs", "aurora", name, sweep_rows(name, "aurora", MODEL, 8))
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "hpcbench", "collect", str(tmp_path / "runs"), "-o", str(out),
                           "--format", "csv,parquet", "--no-plots"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out / 'points.csv'}" in proc.stdout
    assert len(pd.read_csv(out / "points.csv")) == 8
    assert len(pd.read_parquet(out / "points.parquet")) == 8


def test_cli_nothing_found_exits_2_with_one_message_naming_the_roots(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "hpcbench", "collect", str(empty), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(empty) in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_csv_text_helper_round_trips_through_the_reader(tmp_path: Path) -> None:
    # the synthetic writer must produce what the sweep writes: one header, whole lines
    text = csv_text(sweep_rows("x", "aurora", MODEL, 3))
    assert text.count("\n") == 4 and text.endswith("\n")


def test_rows_written_by_the_sweep_writer_are_read_back_exactly(tmp_path: Path) -> None:
    from hpcbench.bench.rows import append_row

    name = "20250101T000000Z-aaaaaa"
    exp_dir = exp(tmp_path, "aurora", name, [])
    points = exp_dir / "results" / "points.csv"
    points.unlink()
    rows = [point_row(name, "aurora", MODEL, "fom1", "FOM1", c, 1000.5 + c, request_rate=float("inf"),
                      stream=True, achieved_request_rate=None) for c in (1, 2)]
    for r in rows:
        append_row(points, r)
    got = collect_points([tmp_path]).points
    assert got["total_throughput"].tolist() == [1001.5, 1002.5]
    assert got["request_rate"].tolist() == [float("inf")] * 2
    assert got["stream"].tolist() == ["true", "true"] and got["achieved_request_rate"].isna().all()
