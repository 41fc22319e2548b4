#!/usr/bin/env bash
# The GPU check before a Pile run: one script, one H200, offline, installs nothing, done within 8 minutes.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from anywhere in the checkout
#   bash benchmarks/gpu_check.sh --dry-run   # prints the commands it would run (a flow check on a CPU)
#
# Parts, each under its own `timeout` (the limits add up to the 465 s budget, so a part that hangs cannot starve
# the later ones); a part that fails or runs out of time is marked in the table and the others still run:
#   gpu_tests  the tests marked `gpu` (pytest -m gpu)
#   mfu        benchmarks/train_step.py --device cuda: pythia-160m and -410m, seq 1024, bf16, micro-batch 8 and
#              16, eager and compiled (per-block torch.compile, the trainer's model.compile=true path)
#   attention  train.py on pythia-410m at micro-batch 8, model.attention=sdpa vs flash (only if flash-attn is
#              installed): MFU from the trainer's own tokens/s, DeepSpeed ZeRO-1 bf16 included
#   acodm_70m  a 30-step pythia_70m AC-ODM run, bf16, DeepSpeed ZeRO-1: every loss finite, weights change
#   mixing     benchmarks/mixing_overhead.py --device cuda at 410M: AC-ODM sketch / static step-time ratio
# The last line is
#   result: mfu_410m=F mfu_160m=F attention_flash_vs_sdpa=R acodm_70m=ok|FAIL sketch_vs_static_410m=R gpu_tests=ok|FAIL
# (nan where a part did not produce its number). Logs and runs stay in $GPU_CHECK_DIR (default: a new /tmp dir).
set -u -o pipefail

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg; use --dry-run or nothing" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
BUDGET_S=${GPU_CHECK_BUDGET_S:-465}  # the whole check: 8 minutes less kill grace, start-up and the table
PEAK_TFLOPS=${PEAK_TFLOPS:-989}      # H100/H200 dense bf16
if (( DRY_RUN )); then
    OUT=${GPU_CHECK_DIR:-/tmp/gpu_check.DRYRUN}
else
    OUT=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
    mkdir -p "$OUT"
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
START=$SECONDS
ROWS=()     # "part|status|seconds|detail"
RESULT=()   # "key=value"

# run_part NAME LIMIT_S LOG CMD...: the command under `timeout`, capped by what is left of the budget.
run_part() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$(( BUDGET_S - (SECONDS - START) ))
    (( limit > left )) && limit=$left
    if (( DRY_RUN )); then
        printf 'part %s (timeout %ss): %s> %s\n' "$name" "$limit" "$(printf '%q ' "$@")" "$log"
        PART_STATUS=dry-run PART_SECONDS=0
        return 0
    fi
    if (( limit < 10 )); then
        PART_STATUS="skipped (budget spent)" PART_SECONDS=0
        echo "[$name] $PART_STATUS" >&2
        return 1
    fi
    local t0=$SECONDS rc
    timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1
    rc=$?
    PART_SECONDS=$(( SECONDS - t0 ))
    if (( rc == 0 )); then PART_STATUS=ok
    elif (( rc == 124 || rc == 137 )); then PART_STATUS="TIMEOUT ${limit}s"
    else PART_STATUS="FAIL rc=$rc"; fi
    echo "[$name] $PART_STATUS in ${PART_SECONDS}s, log $log" >&2
    [[ $PART_STATUS == ok ]]
}

row() { ROWS+=("$1|$2|$3|$4"); }

# py_value LOG PYTHON_EXPR: evaluates a small parser over a log; prints nan when it cannot.
py_value() {
    (( DRY_RUN )) && { echo nan; return; }
    "$PY" - "$@" 2>/dev/null <<'EOF' || echo nan
import sys
kind, path, *rest = sys.argv[1:]
text = open(path).read().splitlines()
if kind == "mfu":  # train_step.py's table: after the size's title, the runner's row ends with "MFU%"
    size, runner = rest
    inside = False
    for line in text:
        if line.startswith(size):
            inside = True
        elif inside and line.startswith(runner):
            print(float(line.split()[-1].rstrip("%")) / 100)
            break
    else:
        print("nan")
elif kind == "result":  # key=value on the "result:" line
    (key,) = rest
    fields = dict(f.split("=", 1) for line in text if line.startswith("result:") for f in line.split()[1:])
    print(fields.get(key, "nan"))
EOF
}

# --- gpu_tests -----------------------------------------------------------------------------------------------
run_part gpu_tests 50 "$OUT/gpu_tests.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/
status=$PART_STATUS
row gpu_tests "$status" "$PART_SECONDS" "$( (( DRY_RUN )) || tail -n 1 "$OUT/gpu_tests.log" 2>/dev/null)"
RESULT+=("gpu_tests=$([[ $status == ok || $status == dry-run ]] && echo "$status" || echo FAIL)")

# --- mfu: train_step.py, both sizes per micro-batch ----------------------------------------------------------
best_160=nan best_410=nan
for mb in 8 16; do
    log="$OUT/train_step_mb$mb.log"
    run_part "mfu mb$mb" 90 "$log" "$PY" benchmarks/train_step.py --device cuda --sizes pythia_160m pythia_410m \
        --seq-len 1024 --batch "$mb" --rounds 3 --steps-per-round 1 --warmup-steps 2 --peak-tflops "$PEAK_TFLOPS"
    status=$PART_STATUS seconds=$PART_SECONDS
    for size in pythia_160m pythia_410m; do
        for runner in "ours eager" "ours compiled"; do
            mfu=$(py_value mfu "$log" "$size" "$runner")
            row "mfu $size mb$mb ${runner#ours }" "$status" "$seconds" "MFU $mfu"
            if [[ $mfu != nan ]]; then
                if [[ $size == pythia_160m ]]; then
                    best_160=$("$PY" -c "import math,sys; a,b=map(float,sys.argv[1:]); print(b if math.isnan(a) else max(a,b))" "$best_160" "$mfu")
                else
                    best_410=$("$PY" -c "import math,sys; a,b=map(float,sys.argv[1:]); print(b if math.isnan(a) else max(a,b))" "$best_410" "$mfu")
                fi
            fi
        done
    done
done
RESULT=("mfu_410m=$best_410" "mfu_160m=$best_160" "${RESULT[@]}")

# --- synthetic Pile-sized token data for the train.py parts ---------------------------------------------------
DATA="$OUT/tokens"
run_part data 25 "$OUT/data.log" "$PY" -c "from neox.data.preprocess import write_synthetic_domains as w; \
w('$DATA', num_domains=4, docs_per_domain=300, vocab_size=50277, seed=0, mean_doc_tokens=512)"
row data "$PART_STATUS" "$PART_SECONDS" "4 random-token domains, vocab 50277"
COMMON=("data.path=$DATA" data.tokenizer=null data.reference_weights=null device=cuda deepspeed.bf16.enabled=true
        logging.progress_bar=false logging.tensorboard=false checkpoint.resume=none eval.at_start=false
        eval.interval_steps=0 eval.val_samples_per_domain=8)

# --- acodm_70m: 30 steps, bf16, ZeRO-1, gradient accumulation 2 ----------------------------------------------
RUN70="$OUT/acodm_70m"
run_part acodm_70m 80 "$OUT/acodm_70m.log" "$PY" train.py configs/pythia_70m.yml "${COMMON[@]}" \
    "logging.run_dir=$RUN70" mixing.method=acodm mixing.acodm.warmup_steps=5 mixing.acodm.device=cuda schedule.train_steps=30 \
    data.global_batch_sequences=16 data.micro_batch_sequences=8 deepspeed.zero_optimization.stage=1 \
    checkpoint.interval_steps=15 checkpoint.keep_last=0 logging.log_interval_steps=5
status=$PART_STATUS seconds=$PART_SECONDS
verdict=FAIL detail=""
if (( DRY_RUN )); then
    verdict=dry-run
elif [[ $status == ok ]]; then
    detail=$("$PY" - "$RUN70" 2>&1 <<'EOF'
import json, math, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
run = Path(sys.argv[1])
recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
losses = [r["loss"] for r in recs if r.get("kind") == "train"]
a = load_file(str(run / "checkpoints/step_00000015/model.safetensors"))
b = load_file(str(run / "checkpoints/step_00000030/model.safetensors"))
changed = sum(not torch.equal(a[k], b[k]) for k in a)
ok = len(losses) == 30 and all(math.isfinite(x) for x in losses) and changed == len(a)
print(f"{'OK' if ok else 'BAD'} steps {len(losses)}, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
      f"{changed}/{len(a)} tensors changed from step 15 to 30")
EOF
)
    [[ $detail == OK* ]] && verdict=ok
fi
row acodm_70m "$status" "$seconds" "${detail:-see $OUT/acodm_70m.log}"
RESULT+=("acodm_70m=$verdict")

# --- mixing: AC-ODM sketch / static at 410M --------------------------------------------------------------------
run_part mixing 50 "$OUT/mixing.log" "$PY" benchmarks/mixing_overhead.py --device cuda --shapes pythia_410m@seq1024 \
    --rounds 3
ratio=$(py_value result "$OUT/mixing.log" sketch_vs_static_pythia_410m)
row "mixing 410m sketch/static" "$PART_STATUS" "$PART_SECONDS" "ratio $ratio"
RESULT+=("sketch_vs_static_410m=$ratio")

# --- attention: sdpa vs flash through the trainer (410m, micro-batch 8) ---------------------------------------
flash_ratio=nan
if (( DRY_RUN )) || "$PY" -c "import flash_attn" >/dev/null 2>&1; then
    declare -A mfu_att
    for att in sdpa flash; do
        run_part "attention $att" 40 "$OUT/attention_$att.log" "$PY" train.py configs/pythia_410m.yml "${COMMON[@]}" \
            "logging.run_dir=$OUT/attention_$att" "model.attention=$att" schedule.train_steps=8 \
            data.global_batch_sequences=8 data.micro_batch_sequences=8 checkpoint.save_final=false
        status=$PART_STATUS seconds=$PART_SECONDS
        mfu_att[$att]=nan
        if (( ! DRY_RUN )) && [[ $status == ok ]]; then
            mfu_att[$att]=$("$PY" - "$OUT/attention_$att" "$PEAK_TFLOPS" 2>/dev/null <<'EOF' || echo nan
import json, statistics, sys
from pathlib import Path
from neox.config import load_config
from neox.model import flops_per_token
run, peak = Path(sys.argv[1]), float(sys.argv[2])
cfg = load_config(run / "config.yml")
tps = [json.loads(l)["tokens_per_s"] for l in (run / "metrics.jsonl").read_text().splitlines()
       if json.loads(l).get("kind") == "train"][3:]  # after compilation and allocator warm-up
print(statistics.median(tps) * flops_per_token(cfg.model, cfg.data.seq_len_tokens) / (peak * 1e12))
EOF
)
        fi
        row "attention 410m mb8 $att (trainer)" "$status" "$seconds" "MFU ${mfu_att[$att]}"
    done
    if (( ! DRY_RUN )); then
        flash_ratio=$("$PY" -c "import sys; a,b=map(float,sys.argv[1:]); print(f'{b/a:.3f}')" \
            "${mfu_att[sdpa]}" "${mfu_att[flash]}" 2>/dev/null || echo nan)
    fi
else
    row "attention flash" "skipped" 0 "flash-attn not installed"
fi
RESULT+=("attention_flash_vs_sdpa=$flash_ratio")

# --- the table ----------------------------------------------------------------------------------------------------
echo
printf '%-36s %-22s %6s  %s\n' part status seconds detail
printf '%-36s %-22s %6s  %s\n' ---- ------ ------- ------
for r in "${ROWS[@]}"; do
    IFS='|' read -r part status seconds detail <<<"$r"
    printf '%-36s %-22s %6s  %s\n' "$part" "$status" "$seconds" "$detail"
done
echo "total $(( SECONDS - START ))s, logs in $OUT"
echo "result: ${RESULT[*]}"
