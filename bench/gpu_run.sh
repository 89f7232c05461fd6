#!/usr/bin/env bash
# The prepared GPU check, as one command for the device tool (an H100/H200 lent to a session).
#
# Here, once, in the repo root (the GPU machine has torch, Lightning, torchmetrics, TensorBoard,
# scikit-learn and pytest, but no Hydra, and reaches no package index; .whl/ is git-ignored):
#   rm -rf .whl; mkdir .whl
#   pip wheel --no-deps -w .whl .                       # vggtune itself, conf/ inside
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#       hydra-core==1.3.2 omegaconf==2.3.0 torchinfo==1.8.0 captum==0.8.0
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # published as a source archive only
#   cp ../shared/bench/gpu_anchor.py .whl/              # 2 MB in all
# Then: device run, carry [".whl"], command "bash bench/gpu_run.sh", timeout_s 600.
# It writes $OUT/gpu_anchor.json, $OUT/bench.json and $OUT/log; quote bench ratios next to the anchor.
set -euo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/log"
python3 -c "import torch, vggtune; print(torch.__version__, vggtune.__version__)" | tee -a "$OUT/log"
python3 -m pytest -q -p no:cacheprovider tests/test_image_cache.py 2>&1 | tail -3 | tee -a "$OUT/log"
(cd "$OUT" && timeout 240 python3 "$OLDPWD/.whl/gpu_anchor.py") 2>&1 | tail -20 | tee -a "$OUT/log"
timeout 330 python3 bench/bench.py --device cuda --arch vgg16 --size 224 --batch 128 --images 4096 \
    --workers 16 --steps 20 --warmup 8 --compile --out "$OUT/bench.json" 2>&1 | tail -25 | tee -a "$OUT/log"
