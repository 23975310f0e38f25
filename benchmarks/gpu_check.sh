#!/usr/bin/env bash
# Every GPU check of the project, in one script that fits about 8 minutes on one H100/H200
# and prints a table last. Each step has its own time limit; a failed step shows as FAIL in
# the table and the script goes on. Logs go to the folder it names (default gpu_check_logs/).
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine, from the project root
#   bash benchmarks/gpu_check.sh --device cpu       # the same steps, tiny, to try it on a CPU
#   bash benchmarks/gpu_check.sh --budget           # also the budget table's GPU row (~8 min more)
#
# Before a device run (on a machine with the package index): `bash ../shared/device/fetch-wheels.sh`
# (kedro, mlflow, ... as wheels in .whl/, git-ignored), and copy the CIFAR-10 JPEG archive into
# the checkout: `mkdir -p data/01_raw && cp ../shared/datasets/cifar10_jpeg.tar.gz data/01_raw/`.
# Carry `.whl` (data/ travels as the ignored folder it is only when named: carry `data/01_raw`).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
BUDGET=0
LOGS=gpu_check_logs
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --budget) BUDGET=1; shift ;;
    --logs) LOGS="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (known: --device cpu|cuda, --budget, --logs DIR)" >&2; exit 2 ;;
  esac
done
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)

if [ -d .whl ] && ! python3 -c "import kedro, mlflow, kedro_mlflow" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl > "$LOGS/wheels.log" 2>&1 || { echo "installing .whl/ failed: $LOGS/wheels.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY=$PWD/.venv/bin/python
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src:$PWD" PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 \
       MPLBACKEND=Agg KEDRO_DISABLE_TELEMETRY=true

ARCHIVE=data/01_raw/cifar10_jpeg.tar.gz
[ -f "$ARCHIVE" ] || ARCHIVE=../shared/datasets/cifar10_jpeg.tar.gz

if [ "$DEVICE" = cpu ]; then  # tiny sizes: the same code paths, in a few minutes on 2 cores
  SMALL="--width 8 --images 256 --steps 3 --warmup 2 --rounds 1 --workers 1 --engines aavae,paper"
  VIEWS="--images 512 --rounds 1"
  BIG_BATCH=64; BATCH=32; KEDRO_PARAMS="model.width=8,pretrain.max_time_minutes=0.3,pretrain.batch_size=64"
  EVAL_ARGS="--train 2000 --test 500 --images 2000 --width 8"
else
  SMALL="--steps 30 --warmup 10 --rounds 2"
  VIEWS="--rounds 2"
  BIG_BATCH=1024; BATCH=256; KEDRO_PARAMS="model.width=64,pretrain.max_time_minutes=1,pretrain.batch_size=256"
  EVAL_ARGS="--images 60000 --width 64"
fi

declare -a ROWS
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember pass/fail
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  echo "== $name (limit ${limit}s)" >&2
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local status=PASS; [ $rc -ne 0 ] && status="FAIL($rc)"; [ $rc -eq 124 ] && status="TIMEOUT"
  ROWS+=("$name|$status|$((SECONDS - started))")
  tail -3 "$LOGS/$name.log" >&2
}
last() { grep -E "$2" "$LOGS/$1.log" 2>/dev/null | tail -1; }

$PY - > "$LOGS/device.log" 2>&1 <<PYEOF
import torch, lightning
print("torch", torch.__version__, "lightning", lightning.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
PYEOF

# 1. The CUDA-only tests: N graph-replayed steps equal N eager steps and never sync.
step tests_cuda 240 $PY -m pytest -q -x tests/training/test_training.py -k "graph or compiled_step or cuda_graph_switch" -p no:cacheprovider
# 2. Views: the batched views against torchvision per image.
step views 120 $PY benchmarks/views_throughput.py --device "$DEVICE" $VIEWS
# 3. Pretraining at batch 256 (128 threads of work on CPU): every engine against the paper recipe.
step pretrain_256 300 $PY benchmarks/pretrain_throughput.py --device "$DEVICE" --batch-size $BATCH $SMALL
# 4. Pretraining at batch 1024: the compiled, graph-replayed step's MFU.
if [ "$DEVICE" = cuda ]; then ENGINES="--engines aavae-compiled-graphed,paper"; else ENGINES=; fi
step pretrain_1024 300 $PY benchmarks/pretrain_throughput.py --device "$DEVICE" --batch-size $BIG_BATCH \
     $SMALL --rounds 1 $ENGINES
# 4b. What Lightning's loop costs per step beside the compiled, graph-replayed step.
if [ "$DEVICE" = cuda ]; then LO="--steps 100 --warmup 20 --rounds 2"; else LO="--steps 10 --warmup 3 --rounds 1 --compile false"; fi
step lightning 240 $PY benchmarks/lightning_overhead.py --device "$DEVICE" $LO
# 5. Evaluation on the device: feature extraction, linear probe, kNN.
step evaluate 180 $PY benchmarks/evaluate.py --device "$DEVICE" $EVAL_ARGS
# 6. A short real pipeline run on the CIFAR-10 JPEG copy: pretrain, then evaluate.
PROJECT=$(mktemp -d)
cp -r conf src pyproject.toml .telemetry "$PROJECT"/ 2>/dev/null; rm -rf "$PROJECT/conf/local"; mkdir -p "$PROJECT/conf/local"
for layer in 01_raw 02_intermediate 03_primary 04_feature 05_model_input 06_models 07_model_output 08_reporting; do mkdir -p "$PROJECT/data/$layer"; done
ACCEL=cpu; [ "$DEVICE" = cuda ] && ACCEL=gpu
PARAMS="dataset.path=$PWD/$ARCHIVE,$KEDRO_PARAMS,pretrain.accelerator=$ACCEL,evaluate.baselines=[random_init]"
[ "$DEVICE" = cpu ] && PARAMS="$PARAMS,evaluate.embedding_method=pca"
step kedro_pretrain 240 bash -c "cd $PROJECT && $PY -m kedro run --pipeline pretrain --env imagefolder --params '$PARAMS'"
step kedro_evaluate 240 bash -c "cd $PROJECT && $PY -m kedro run --pipeline evaluate --env imagefolder --params '$PARAMS'"
cp "$PROJECT/data/08_reporting/metrics.json" "$LOGS/metrics.json" 2>/dev/null
# 7. Optionally the budget table's GPU row: 3 objectives x 2 seeds x 1 minute at width 64.
if [ "$BUDGET" = 1 ]; then
  step budget 600 $PY benchmarks/budget_cifar10.py --path "$ARCHIVE" --width 64 --budget-minutes 1 --seeds 2 \
       --project "$PROJECT" --snapshot-every 1000
fi

# The table.
{
  echo
  echo "gpu_check on $(last device '^device') | $(last device '^torch') | $(date -u +%Y-%m-%dT%H:%MZ)"
  printf '%-16s %-10s %6s  %s\n' step status secs figure
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name status secs <<< "$row"
    case $name in
      tests_cuda) figure=$(last tests_cuda 'passed|failed|skipped') ;;
      views) figure="views ratio $(last views '^ratio:' | cut -d' ' -f2)" ;;
      pretrain_256|pretrain_1024)
        figure="$(grep -E '^engine:' "$LOGS/$name.log" | sed -E 's/^engine: ([a-z-]+) images_per_s: ([0-9.]+).*step_ms: ([0-9.]+)( mfu: ([0-9.%]+))?.*/\1 \2 img\/s \5;/' | tr '\n' ' ')$(last $name '^ratio:')"
        compiled=$(grep -E '^compile_s' "$LOGS/$name.log" | sed -E 's/compile_s ([a-z-]+): first step ([0-9.]+) s.*/compile \2 s/' | head -1)
        [ -n "$compiled" ] && figure="$figure; $compiled"
        # The model FLOP rate of the first aavae engine as a share of this run's dense matmul.
        share=$(grep -E '^flop_share aavae' "$LOGS/$name.log" | head -1 | sed -E 's/^flop_share ([a-z-]+): ([0-9.]+) GFLOP\/s = ([0-9.]+)% of bf16 matmul, ([0-9.]+)% of fp32 matmul.*/\1 \2 GFLOP\/s = \3% of bf16, \4% of fp32 matmul/')
        [ -n "$share" ] && figure="$figure; $share" ;;
      evaluate) figure="$(last evaluate '^features: [0-9]'); $(last evaluate '^features: relative' | cut -d' ' -f2-) $(last evaluate '^seconds:')" ;;
      lightning) figure="$(last lightning '^lightning_overhead_ms:')" ;;
      kedro_pretrain) figure="$(last kedro_pretrain 'Schedule fitted|steps in all|Training step:' | sed -E 's/.*(Training step:|Schedule)/\1/')"
        # A compile or capture that failed fell back to the next engine down: name it.
        fell=$(grep -m1 -oE 'The (CUDA graph|compiled step \(torch.compile\)|torch.compile) (failed|gave a non-finite loss)' "$LOGS/kedro_pretrain.log")
        [ -n "$fell" ] && figure="$figure; FELL BACK: $fell" ;;
      kedro_evaluate) figure="$(python3 -c "import json;m=json.load(open('$LOGS/metrics.json'));print(f\"linear {m['linear_top1']:.4f} knn {m['knn_top1']:.4f}\")" 2>/dev/null)" ;;
      budget) figure="see $LOGS/budget.log (table at its end)" ;;
      *) figure= ;;
    esac
    printf '%-16s %-10s %6s  %s\n' "$name" "$status" "$secs" "$figure"
  done
  echo "logs: $LOGS"
} | tee "$LOGS/table.txt"
