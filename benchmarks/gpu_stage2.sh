#!/usr/bin/env bash
# The Stage-2 protocol (benchmarks/stage2_protocol.py) on an offline one-GPU machine.
#
# Follows ../shared/GPU.md: wheels the machine lacks in .whl/ (trl, datasets, anndata, scanpy,
# pydantic, POT, ...) and the data in .gpudata/ (same layout as ../shared/data), both carried with
# the checkout. Many small models share the GPU as parallel processes (JOBS). Results and logs are
# collected as each evaluation finishes and packed into ONE archive, $OUT/results.tgz, every 20 s
# and at the end: the device tool returns only a handful of files and no deep folders, so a run
# that wrote its results as many small files under $OUT came back (2026-11-26) with almost nothing.
# Unpack with `tar xzf results.tgz`, then `python benchmarks/stage2_table.py identity`.
#
#   GRPO_CONFIGS="a=configs/stage2/grpo_lr5e-5.yaml b=configs/stage2/grpo_lr2e-4.yaml" SEEDS="0 1 2" \
#     JOBS=16 LIMIT=420 bash benchmarks/gpu_stage2.sh
# Identity tasks (DATASETS, default pbmc68k and Kang 2018: annotation + generation) run every recipe
# of GRPO_CONFIGS over SEEDS (choose on validation); the dynamics tasks (A375 sensitivity, Kang
# perturbation) run the first recipe once (seed 0; DYNAMICS=0 skips them). DIAGNOSE lists the
# duality rewards diagnosed on each SFT model (empty: none); EXTRA_ARGS go to stage2_protocol.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_stage2_out}"
WORK="${WORK:-${TMPDIR:-/tmp}/cellduality_stage2}"
SEEDS="${SEEDS:-0 1 2}"
DATASETS="${DATASETS:-pbmc68k_reduced kang2018}"
DIAGNOSE="${DIAGNOSE-likelihood paper}"
JOBS="${JOBS:-14}"
LIMIT="${LIMIT:-420}"
GRPO_CONFIGS="${GRPO_CONFIGS:-default=configs/grpo.yaml}"
RECIPES=()
for c in $GRPO_CONFIGS; do RECIPES+=(--grpo-config "$c"); done
IDENTITY=()
for d in $DATASETS; do IDENTITY+=(--dataset "$d"); done
FIRST="${GRPO_CONFIGS%% *}"
RES="$WORK/results"
mkdir -p "$OUT" "$RES"
pack() { tar czf "$OUT/results.tgz.part" -C "$RES" . 2>/dev/null && mv "$OUT/results.tgz.part" "$OUT/results.tgz"; }
( while sleep 20; do pack; done ) &
PACKER=$!
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "${TMPDIR:-/tmp}/site" .whl/*.whl
  export PYTHONPATH="${TMPDIR:-/tmp}/site:$PWD/src"
fi
export CELLDUALITY_DATA_DIR="${CELLDUALITY_DATA_DIR:-$PWD/.gpudata}"
export HF_HUB_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; nproc; date; } > "$OUT/machine.txt"
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'trl', trl.__version__)" >> "$OUT/machine.txt" 2>&1
# shellcheck disable=SC2086
python3 benchmarks/stage2_protocol.py --out "$WORK/identity" --results "$RES/identity" \
  "${IDENTITY[@]}" --seeds $SEEDS "${RECIPES[@]}" --diagnose $DIAGNOSE \
  --jobs "$JOBS" --time-limit "$LIMIT" ${EXTRA_ARGS:-} > "$RES/identity.log" 2>&1 &
if [ -n "${DYNAMICS:-1}" ] && [ "${DYNAMICS:-1}" != 0 ]; then
  python3 benchmarks/stage2_protocol.py --out "$WORK/dynamics" --results "$RES/dynamics" \
    --dataset a375_plx4720 --dataset kang2018_perturbation --seeds 0 --grpo-config "$FIRST" \
    --jobs 3 --time-limit "$LIMIT" ${EXTRA_ARGS:-} > "$RES/dynamics.log" 2>&1 &
fi
wait $(jobs -p | grep -v "^$PACKER$")
kill "$PACKER" 2>/dev/null
date >> "$OUT/machine.txt"
cp "$OUT/machine.txt" "$RES/"
pack
tail -n 3 "$RES/identity.log" "$RES/dynamics.log" 2>/dev/null
