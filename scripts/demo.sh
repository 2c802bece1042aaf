#!/usr/bin/env bash
# `make demo`: the built-in Debian dataset → baseline table (minilm-l6, mpnet-base) → a local
# Ray head on 127.0.0.1 → `ray job submit` of a 2-worker training run → the trained model's table.
# Sizes are set for a 2-core machine; override with DEMO_DOCS / DEMO_QUERIES / DEMO_STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BIN=.venv/bin
OUT=${DEMO_OUT:-$PWD/demo-out}
DATA=$OUT/debian
RUN_NAME=${DEMO_RUN_NAME:-demo-minilm}
mkdir -p "$OUT"

echo "== 1/4 building the Debian dataset (${DEMO_DOCS:=1500} docs, ${DEMO_QUERIES:=1000} queries)"
"$BIN/embedray" data debian "$DATA" --max-docs "$DEMO_DOCS" --max-queries "$DEMO_QUERIES"

echo "== 2/4 baseline: bundled models on the test split"
"$BIN/embedray" eval --model minilm-l6 --model mpnet-base --data "$DATA" --split test \
  --output "$OUT/baseline.json"

echo "== 3/4 training minilm-l6 on Ray Train (2 workers × 1 CPU) via ray job submit"
scripts/ray-head.sh start >/dev/null
trap 'scripts/ray-head.sh stop' EXIT INT TERM
# shellcheck disable=SC1091
source .ray-head/env
"$BIN/ray" job submit --working-dir . -- python jobs/train.py jobs/configs/train-debian-cpu.yaml \
  "data.path=$DATA" "data.train_pairs=$DATA/train_pairs.jsonl" "cluster.storage_path=$OUT/runs" \
  "cluster.run_name=$RUN_NAME" "train.max_steps=${DEMO_STEPS:=120}" train.eval_every=0 train.checkpoint_every=60

echo "== 4/4 trained model vs. its base on the test split"
"$BIN/embedray" eval --model minilm-l6 --model "$OUT/runs/$RUN_NAME/final" --data "$DATA" --split test \
  --output "$OUT/trained.json"
echo
echo "trained model:   $OUT/runs/$RUN_NAME/final   (SentenceTransformer(path) loads it)"
echo "training logs:   $OUT/runs/$RUN_NAME/detailed_training_logs.json, TensorBoard: $OUT/runs/$RUN_NAME/runs"
echo "tables (JSON):   $OUT/baseline.json $OUT/trained.json"
