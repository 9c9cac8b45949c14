#!/usr/bin/env bash
# What CI cannot run, on one NVIDIA GPU in under 10 minutes; tables land in bench/out/gpu/ (or $OUT).
#   1. the bf16 chain with NCCL: the --tiny pipeline through all seven stages on ds_configs/zero3.json
#      (bf16, fused torch AdamW), export and report (its frozen-parameter check reads each stage's
#      ZeRO checkpoint through zero_to_fp32);
#   2. stage step time and MFU at phi-2 widths with a few layers (bench/gpu_stages.py);
#   3. split vs unsplit embedding + lm_head step, new ids starting at 50,295 (phi-2: unaligned) and at
#      50,304 (aligned to 64).
#     bash bench/gpu_check.sh            # after tools/setup_env.sh with a CUDA torch (README: GPU install)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export DS_ACCELERATOR=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)" \
    | tee -a "$OUT/gpu.txt"

echo "== 1. bf16 chain, NCCL, stages 1-7 (--tiny pipeline)"
rm -rf "$OUT/tiny"
timeout 300 "$PY" -m megaeeve pipeline --tiny --run-dir "$OUT/tiny" --nproc 1 --ds-config ds_configs/zero3.json \
    > "$OUT/chain.log" 2>&1 || { tail -40 "$OUT/chain.log"; echo "chain FAILED"; }
tail -5 "$OUT/chain.log"
grep -h '"kind": "train"' "$OUT"/tiny/stage-*/metrics.jsonl | tail -3 || true

echo "== 2. stage step time and MFU, phi-2 widths, 4 layers"
timeout 240 "$PY" bench/gpu_stages.py --layers 4 --micro 4 --seq-length 2048 --steps 5 --warmup 2 | tee "$OUT/stages.md"

echo "== 3. split vs unsplit heads: new ids from 50,295 (unaligned) and 50,304 (aligned)"
for base in 50295 50304; do
    timeout 60 "$PY" bench/bench_split_embedding.py --device cuda --dtype bfloat16 --hidden 2560 --layers 4 \
        --base-vocab "$base" --steps 20 | tee "$OUT/split-$base.md"
done
