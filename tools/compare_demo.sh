#!/usr/bin/env bash
# The demo-scale study behind `make compare`: the same demo_cpu.yml model, seed, data and step count with the
# natural mixture, uniform, ODM, DoGE and AC-ODM (both reward forms; the linear one with and without the
# entropy bonus), then tools/compare_runs.py.
#   STEPS=300 OUT=runs/compare bash tools/compare_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-300}
OUT=${OUT:-runs/compare}
METHODS=${METHODS:-"natural uniform odm doge acodm_linear acodm_linear_entropy acodm_paper"}
mkdir -p "$OUT"

overrides_for() {
  case "$1" in
    natural) echo "mixing.method=static mixing.static={kind: temperature, alpha: 1.0}" ;;  # token proportions
    uniform) echo "mixing.method=static mixing.static={kind: uniform}" ;;
    odm) echo "mixing.method=odm" ;;
    doge) echo "mixing.method=doge" ;;
    acodm_linear) echo "mixing.method=acodm mixing.acodm.reward=linear mixing.acodm.entropy_coef=0.0" ;;
    acodm_linear_entropy) echo "mixing.method=acodm mixing.acodm.reward=linear mixing.acodm.entropy_coef=1.0" ;;
    acodm_paper) echo "mixing.method=acodm mixing.acodm.reward=paper mixing.acodm.entropy_coef=0.0" ;;
    *) echo "unknown method $1" >&2; exit 2 ;;
  esac
}

runs=()
for m in $METHODS; do
  rm -rf "$OUT/$m"
  IFS=$'\n' read -r -d '' -a extra < <(overrides_for "$m" | sed 's/ mixing\./\nmixing./g'; printf '\0')
  echo "== $m: ${extra[*]}" >&2
  start=$(date +%s)
  "$PY" train.py configs/demo_cpu.yml "name=$m" "logging.run_dir=$OUT/$m" logging.progress_bar=false \
    logging.log_interval_steps=50 "schedule.train_steps=$STEPS" checkpoint.interval_steps=0 "${extra[@]}"
  echo "== $m took $(( $(date +%s) - start )) s" >&2
  runs+=("$OUT/$m")
done
"$PY" tools/compare_runs.py "${runs[@]}" -o "$OUT/report"
echo "report: $OUT/report/summary.md" >&2
