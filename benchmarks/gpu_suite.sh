#!/usr/bin/env bash
# GPU suite (issue 17 item 7): one call, at most ~9 minutes on one H100/H200.
#
#   benchmarks/gpu_suite.sh --prepare   # on the CPU, before a GPU is lent: every stage genrec
#                                       # reads (prepare, embeddings, SASRec, RQ) for Instruments
#                                       # and Beauty into runs/gpu_suite/<dataset>
#   benchmarks/gpu_suite.sh             # on the GPU: the paper-size comparisons (MSCGRec and
#                                       # TIGER on Instruments and Beauty, 4 trainings in
#                                       # parallel on the one GPU, each capped by MAX_TIME), then
#                                       # the decode benchmark; JSONs into benchmarks/results/
#   benchmarks/gpu_suite.sh --dry-run   # the same path at toy size on the CPU (configs/tiny.yaml
#                                       # prepared by one `mscg fit`, then the same parallel genrec
#                                       # trainings, 1 epoch, decode_speed --tiny, the same JSON
#                                       # collection), results into a temp dir:
#                                       # tests/test_gpu_suite.py runs it in `make test`
#
# Environment: PY (python, default .venv/bin/python or python3), RUNS (default runs/gpu_suite),
# OUT (results folder), MAX_TIME (Lightning max_time per training, default 00:00:07:00).
# Each training runs `mscg genrec` in its own copy of the prepared run directory, so the four
# never write to the same files; logs go to $RUNS/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "gpu_suite.sh: unknown option '$1' (use --prepare, --dry-run or nothing)." >&2; exit 2 ;;
esac

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MSCG=("$PY" -m mscg_lightning)

if [ "$MODE" = dry ]; then
  RUNS=${RUNS:-$(mktemp -d)/runs}
  OUT=${OUT:-$(dirname "$RUNS")/results}
  DATASETS=(tiny)
  EXTRA=(--data_root tests/fixtures --genrec.trainer.max_epochs 1 --genrec.trainer.accelerator cpu)
  DECODE=(--tiny --device cpu)
  PREP_EXTRA=(--data_root tests/fixtures)
else
  RUNS=${RUNS:-runs/gpu_suite}
  OUT=${OUT:-benchmarks/results}
  DATASETS=(instruments beauty)
  EXTRA=(--genrec.trainer.max_time "${MAX_TIME:-00:00:07:00}" --genrec.trainer.accelerator gpu)
  DECODE=(--device cuda)
  PREP_EXTRA=()
fi
mkdir -p "$RUNS/logs" "$OUT"

# the stages genrec reads, per dataset (see each config's genrec.modalities)
stages() {
  case "$1" in
    instruments) echo "prepare sasrec rq_collab" ;;
    beauty) echo "prepare text_embed sasrec rq_text rq_collab" ;;
  esac
}

prepare() {
  local d=$1
  if [ "$MODE" = dry ]; then  # toy chain: one process (`mscg fit`) instead of one per stage
    "${MSCG[@]}" fit --config "configs/$d.yaml" --run_dir "$RUNS/$d" "${PREP_EXTRA[@]}" \
      >"$RUNS/logs/$d-prepare.log" 2>&1 || { tail -20 "$RUNS/logs/$d-prepare.log"; exit 1; }
    return
  fi
  for stage in $(stages "$d"); do
    echo "[gpu_suite] $d: $stage"
    "${MSCG[@]}" "$stage" --config "configs/$d.yaml" --run_dir "$RUNS/$d" "${PREP_EXTRA[@]}" \
      >"$RUNS/logs/$d-$stage.log" 2>&1 || { tail -20 "$RUNS/logs/$d-$stage.log"; exit 1; }
  done
}

if [ "$MODE" = prepare ] || [ "$MODE" = dry ]; then
  for d in "${DATASETS[@]}"; do prepare "$d"; done
  [ "$MODE" = prepare ] && { echo "[gpu_suite] prepared into $RUNS"; exit 0; }
fi
for d in "${DATASETS[@]}"; do
  [ -d "$RUNS/$d/prepared" ] || {
    echo "gpu_suite.sh: $RUNS/$d/prepared is missing: run benchmarks/gpu_suite.sh --prepare first." >&2
    exit 2
  }
done

text_source() {  # the text codes TIGER reads
  case "$1" in instruments) echo "prepare:codes_lemb" ;; *) echo "rq_text" ;; esac
}

start=$(date +%s)
pids=()
for d in "${DATASETS[@]}"; do
  for v in mscgrec tiger; do
    run="$RUNS/$d-$v"
    rm -rf "$run" && cp -r "$RUNS/$d" "$run"
    # the fast overlay for both; TIGER: one modality in and out, the T5 preset
    args=(--config "configs/$d.yaml" --config configs/model/genrec-fast.yaml)
    if [ "$v" = tiger ]; then
      args+=(--config configs/model/tiger.yaml
        --genrec.modalities "{text: $(text_source "$d")}" --genrec.target text)
    fi
    "${MSCG[@]}" genrec "${args[@]}" --run_dir "$run" "${EXTRA[@]}" --force \
      >"$RUNS/logs/$d-$v.log" 2>&1 &
    pids+=("$!:$d-$v")
  done
done
fail=0
for entry in "${pids[@]}"; do
  wait "${entry%%:*}" || { echo "[gpu_suite] ${entry#*:} failed:"; tail -20 "$RUNS/logs/${entry#*:}.log"; fail=1; }
done
[ "$fail" = 0 ] || exit 1

"$PY" benchmarks/decode_speed.py "${DECODE[@]}" --out "$OUT/decode_speed_gpu.json" \
  >"$RUNS/logs/decode.log" 2>&1 || { tail -20 "$RUNS/logs/decode.log"; exit 1; }

# collect: $OUT/genrec_<dataset>_gpu.json with variants.<name>.test.<metric>.{mean,ci_low,ci_high}
"$PY" - "$RUNS" "$OUT" "$(( $(date +%s) - start ))" "$MODE" "${DATASETS[@]}" <<'PYEOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from _common import machine_info, utc_now

runs, out, wall, mode, datasets = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
for d in datasets:
    variants = {}
    for v in ("mscgrec", "tiger"):
        metrics = json.loads((runs / f"{d}-{v}" / "genrec" / "metrics.json").read_text())
        variants[v] = {"test": metrics["test"], "epochs": metrics["epochs"], "model": metrics["model"]}
    path = out / f"genrec_{d}_gpu.json"
    path.write_text(json.dumps({
        "variants": variants, "wall_s": wall, "dry_run": mode == "dry", "date": utc_now(),
        "machine": machine_info(), "command": "benchmarks/gpu_suite.sh",
    }, indent=2, sort_keys=True) + "\n")
    print(f"[gpu_suite] wrote {path}")
PYEOF
echo "[gpu_suite] done in $(( $(date +%s) - start )) s"
