#!/usr/bin/env bash
# cordlite's GPU checks in one run, on an NVIDIA GPU with only pip packages and no hub access; about
# 6 to 8 minutes on an H100:
#   1. python -m pytest -m gpu tests/test_gpu.py     NF4 trains on CUDA, the teacher is the plain base,
#                                                      shared-prefix decode and prompt pass, fp16 scaling
#   2. the 7B step, shared base vs a separate teacher copy: peak memory, s/step, tokens/s, MFU
#      (python -m benchmarks.step_memory_speed --size 7b --compare; builds the random 7B first)
#   3. with two or more GPUs: two data-parallel processes (NCCL) train the tiny model
# and prints one table. Packages the image lacks come from .whl/ (bash benchmarks/gpu_wheels.sh, here).
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (OUT_DIR defaults to $OUT, else benchmarks/results/gpu_check)
#   GPU_CHECK_SIZE=tiny bash benchmarks/gpu_check.sh    the same script on the tiny model (a CPU run of the plumbing)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu_check}}
size=${GPU_CHECK_SIZE:-7b}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cordlite-site \
    .whl/*.whl || { echo "error: installing .whl/ failed"; exit 1; }
  export PYTHONPATH="/tmp/cordlite-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
summary="$out/summary.md"
: > "$summary"
"$py" - "$summary" <<'PYEOF'
import importlib.metadata as md, sys, torch
lines = [f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'}, "
         f"{torch.cuda.device_count()} GPU(s); torch {torch.__version__}, CUDA {torch.version.cuda}"]
for name in ("transformers", "peft", "bitsandbytes", "accelerate"):
    try:
        lines.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        lines.append(f"{name} MISSING")
open(sys.argv[1], "a").write("; ".join(lines) + "\n\n| check | exit | seconds |\n|---|---|---|\n")
PYEOF
step() {  # name, time limit (s), command...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name (at most $limit s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  echo "| $name | $rc | $(( $(date +%s) - start )) |" >> "$summary"
  tail -n 5 "$out/$name.log"
}
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
step pytest_gpu 180 "$py" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider
step step_${size} 330 "$py" -m benchmarks.step_memory_speed --size "$size" --compare --steps 1 --warmup 1 \
  --out "$out" --cache /tmp/cordlite-bench
if [ "$gpus" -ge 2 ]; then
  step ddp_2gpu 120 bash -c "$py -m cordlite tiny-model /tmp/cordlite-ddp/model >/dev/null && \
    $py -m cordlite tiny-data /tmp/cordlite-ddp/data >/dev/null && \
    $py -m cordlite train recipes/tiny_cpu.yaml --num-processes 2 --set model.device=cuda \
      --set model.name_or_path=/tmp/cordlite-ddp/model --set data.train_manifest=/tmp/cordlite-ddp/data/manifest.jsonl \
      --set train.max_steps=2 --set train.batch_size=4 --set train.micro_batch_size=2 \
      --set output.dir=/tmp/cordlite-ddp/run --set output.progress=false --overwrite"
fi
echo
cat "$summary"
echo
cat "$out"/step_memory_speed_"${size}"_*_compare.md 2>/dev/null || echo "no step table: see $out/step_${size}.log"
