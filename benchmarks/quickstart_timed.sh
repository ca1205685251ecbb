#!/usr/bin/env bash
# The quickstart run the README quotes: `grpo-lightning fit --config configs/quickstart.yaml` under GNU
# time (user and system CPU time, wall time, peak memory), with `uptime` before and after it (on a shared
# machine the load sets the wall time), keeping its log and its metrics.csv in OUT.
#
#   bash benchmarks/quickstart_timed.sh [OUT] [more fit arguments, e.g. --seed_everything 1]
#
# OUT (default benchmarks/results/quickstart-seed0) gets load.txt (uptime before), fit.log (the run's
# output, GNU time's report, its exit status and uptime after) and metrics.csv (the CSV logger's).
set -uo pipefail
out="${1:-benchmarks/results/quickstart-seed0}"
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$out"
uptime > "$out/load.txt"
{
  /usr/bin/time -v grpo-lightning fit --config configs/quickstart.yaml "$@"
  echo "rc=$?"
  uptime
} > "$out/fit.log" 2>&1
run="$(sed -n 's/^  run folder *//p' "$out/fit.log")"
if [[ -z "$run" || ! -f "$run/metrics.csv" ]]; then
  echo "the run printed no run folder with a metrics.csv: see $out/fit.log" >&2
  exit 1
fi
cp "$run/metrics.csv" "$out/metrics.csv"
echo "wrote $out/load.txt, $out/fit.log, $out/metrics.csv"
