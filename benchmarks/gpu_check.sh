#!/usr/bin/env bash
# Speed check of the whole method on an offline one-GPU machine (issue #15), within ~8 minutes:
# Kang 2018 sentences -> tasks (annotation + generation) -> offline teacher -> SFT `base` ->
# evaluate (annotation, generation) -> annotate (fast path) -> GRPO with the duality reward
# (likelihood) and with the oracle. Prints SFT tokens/s, GRPO s/step with its breakdown, evaluation
# examples/s and annotate cells/s; each stage's log and metrics are packed into $OUT/results.tar.gz as
# soon as they exist, so a run cut off at its limit still returns what it finished.
#
# Follows ../shared/GPU.md: wheels the machine lacks in .whl/, the Kang file in .gpudata/
# (same layout as ../shared/data), both carried with the checkout; then
#   bash benchmarks/gpu_check.sh 2>&1 | tee "$OUT/log.txt"
# First stages on a CPU, with a tiny budget (about 2 minutes on 2 cores):
#   PRESET=tiny SFT_EPOCHS=0.05 GRPO_STEPS=1 GRPO_G=4 GRPO_PROMPTS=2 GRPO_TOKENS=32 EVAL_N=8 \
#     ANNOTATE_CELLS=200 REASONING_CELLS=8 FULL_CELLS=16 OUT=runs/gpu_check bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_check_out}"
WORK="${WORK:-${TMPDIR:-/tmp}/cellduality_gpu_check}"
PRESET="${PRESET:-base}"
SFT_EPOCHS="${SFT_EPOCHS:-2}"
GRPO_STEPS="${GRPO_STEPS:-6}"
GRPO_G="${GRPO_G:-8}"
GRPO_PROMPTS="${GRPO_PROMPTS:-8}"
GRPO_TOKENS="${GRPO_TOKENS:-192}"
EVAL_N="${EVAL_N:-200}"
ANNOTATE_CELLS="${ANNOTATE_CELLS:-}"
REASONING_CELLS="${REASONING_CELLS:-200}"
FULL_CELLS="${FULL_CELLS:-500}"
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK"
# every stage's log, seconds and metrics go to $R, packed into $OUT/results.tar.gz after each stage:
# the GPU machine returns only a few files, and a run cut off at its limit still returns what it finished
R="${WORK}_results"
rm -rf "$R" && mkdir -p "$R"
keep() { tar czf "$OUT/results.tar.gz" -C "$R" . ; }
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "${TMPDIR:-/tmp}/site" .whl/*.whl
  export PYTHONPATH="${TMPDIR:-/tmp}/site:$PWD/src"
fi
export CELLDUALITY_DATA_DIR="${CELLDUALITY_DATA_DIR:-$PWD/.gpudata}"
export HF_HUB_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
KANG="$CELLDUALITY_DATA_DIR/kang2018_pbmc_ifnb_scgen/kang2018_scgen_valid.h5ad"
CD=(python3 -m cellduality.cli.main)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; nproc; date; } > "$R/machine.txt"
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'trl', trl.__version__)" >> "$R/machine.txt" 2>&1
cat "$R/machine.txt"

# stage NAME CMD...: run, time, log; a failed stage stops the script (later stages need its output),
# except under OPTIONAL=1 (a measurement nothing after it needs: the script goes on)
stage() {
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  echo "== $name"
  if ! "$@" > "$R/$name.log" 2>&1; then
    echo "!! $name failed; last lines:"; tail -n 20 "$R/$name.log"; keep
    [ -n "${OPTIONAL:-}" ] && return 1
    exit 1
  fi
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)" > "$R/$name.seconds"
  echo "   $name: $(cat "$R/$name.seconds") s"
  keep
}

stage sentences "${CD[@]}" sentences kang2018 "$WORK/sentences"
stage tasks "${CD[@]}" tasks build "$WORK/sentences" "$WORK/tasks" --task annotation --task generation \
  --max-genes 24 --option annotation.n_hidden=6
stage teach "${CD[@]}" teach "$WORK/tasks" "$WORK/sft_data" --n 4
stage sft "${CD[@]}" sft "$WORK/sft_data" "$WORK/sft" --model "$PRESET" --epochs "$SFT_EPOCHS" --set batch_size=32
cp "$WORK/sft/sft_summary.json" "$R/sft_summary.json" && keep
python3 - "$R/sft_summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"SFT: {s['tokens_seen'] / s['wall_seconds']:,.0f} tokens/s ({s['steps']} steps, {s['tokens_seen']:,} tokens "
      f"in {s['wall_seconds']:.1f} s of training, {s['parameters'] / 1e6:.1f}M parameters)")
EOF

# each entry TASK or TASK:fast (classification answers by likelihood ranking, `evaluate --fast-labels`)
EVAL_TASKS="${EVAL_TASKS-annotation annotation:fast generation}"
for entry in $EVAL_TASKS; do
  task=${entry%%:*}; name=$task; FAST=()
  [ "$entry" != "$task" ] && name="${task}_fast" && FAST=(--fast-labels)
  stage "evaluate_$name" "${CD[@]}" evaluate "$WORK/sft" "$WORK/tasks" "$WORK/eval_$name" --task "$task" \
    --max-examples "$EVAL_N" --no-baselines --batch-size "${EVAL_BATCH:-256}" "${FAST[@]}" ${EVAL_ARGS:-}
  cp "$WORK/eval_$name/metrics.json" "$R/eval_${name}_metrics.json" && keep
  python3 - "$R/eval_${name}_metrics.json" "$R/evaluate_$name.seconds" "$task" "$WORK/eval_$name/run.json" <<'EOF2'
import json, sys
m, seconds, task = json.load(open(sys.argv[1])), float(open(sys.argv[2]).read()), sys.argv[3]
run = json.load(open(sys.argv[4]))
timing = run.get("timing", {}).get(task)
r = m[task]
n = int(r.get("n") or 0)
main = {k: r[k] for k in ("accuracy", "macro_f1", "valid_rate", "knn@10") if r.get(k) is not None}
answering = (f" (answering alone {timing['answer_seconds']:.1f} s, {timing['examples_per_second']:.1f} examples/s)"
             if timing else "")
how = "ranked labels" if run.get("fast_labels") else "generated answers"
print(f"evaluate {task} ({how}, start-up included): {seconds:.1f} s for {n} examples, "
      f"{n / seconds:.1f} examples/s{answering}; " + ", ".join(f"{k} {v:.3f}" for k, v in main.items()))
EOF2
done

CELLS=()
[ -n "$ANNOTATE_CELLS" ] && CELLS=(--cells "$ANNOTATE_CELLS")
# ANNOTATE_TOKENIZERS="false true": once as the CLI runs (tokenizers on one thread), once with the
# tokenizer's own threads; --batch-tokens 0 = the default (by the GPU's free memory)
for tp in ${ANNOTATE_TOKENIZERS:-false}; do
  name=annotate; [ "$tp" != false ] && name="annotate_tokenizers_$tp"
  stage "$name" env TOKENIZERS_PARALLELISM="$tp" python3 benchmarks/bench_annotate.py --model "$WORK/sft" \
    --data "$KANG" "${CELLS[@]}" --reasoning-cells "$REASONING_CELLS" --full-cells "$FULL_CELLS" --batch-size 128 \
    --tile "${ANNOTATE_TILE:-10}" --batch-tokens ${ANNOTATE_BATCH_TOKENS:-0 16384 65536} --profile
  grep -E "cells/s|agreement|confidence|model |tokens per" "$R/$name.log"
done
GRPO_SET=(--max-steps "$GRPO_STEPS" --set num_generations="$GRPO_G" --set prompts_per_step="$GRPO_PROMPTS"
          --set max_completion_length="$GRPO_TOKENS" --set dual_reward=likelihood --set save_steps=100000)
# Modes after `duality` and `ground-truth` are optional measurements (a failure is reported, the script
# goes on): duality-bf16 = the policy's weights in bf16 (`model_dtype`), no float32 master copy under
# autocast; duality-bf16-static = that plus a static KV cache for the rollouts (transformers then
# compiles the decoding step on a GPU; TRL's `cache_implementation`: in float32 weights under bf16
# autocast the cache's dtype did not match); duality-cb = transformers' continuous batching (TRL's
# `use_transformers_continuous_batching`). Each optional mode gets at most GRPO_OPTIONAL_SECONDS.
for mode in ${GRPO_MODES:-duality ground-truth duality-bf16 duality-bf16-static}; do
  EXTRA=(); REWARD=$mode; LIMIT=()
  case $mode in duality-*) REWARD=duality; LIMIT=(timeout "${GRPO_OPTIONAL_SECONDS:-150}") ;; esac
  case $mode in *-bf16*) EXTRA+=(--set model_dtype=bfloat16) ;; esac
  case $mode in *-static) EXTRA+=(--set cache_implementation=static) ;; esac
  [ "$mode" = duality-cb ] && EXTRA+=(--set use_transformers_continuous_batching=true)
  OPTIONAL=${LIMIT:+1} stage "grpo_$mode" "${LIMIT[@]}" "${CD[@]}" grpo "$WORK/tasks" "$WORK/grpo_$mode" \
    --sft-model "$WORK/sft" --reward "$REWARD" "${GRPO_SET[@]}" "${EXTRA[@]}" || continue
  cp "$WORK/grpo_$mode/metrics.json" "$R/grpo_${mode}_metrics.json" && keep
  python3 - "$R/grpo_${mode}_metrics.json" "$mode" "$GRPO_PROMPTS" "$GRPO_G" <<'EOF'
import json, sys
m, mode, prompts, g = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
t = m["timing"]
parts = ", ".join(f"{k} {v:.0%}" for k, v in t["fraction"].items() if v >= 0.005)
later = sorted(s["wall"] for s in m.get("steps", [])[1:])
median = f", median after the first step {later[len(later) // 2]:.2f} s" if later else ""
print(f"GRPO {mode} ({prompts} x G={g}): {t['seconds_per_step']:.2f} s/step{median}, reward "
      f"{m['reward_time_fraction']:.1%} of the step (first step included; {t.get('steps_timed', '?')} steps) -- {parts}")
EOF
done

date >> "$R/machine.txt"; keep
