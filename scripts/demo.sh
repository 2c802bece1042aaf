#!/usr/bin/env bash
# `make demo`: a local Ray head on 127.0.0.1 (token auth) → `ray job submit` of the whole
# pipeline on the built-in Debian dataset → the report's table and where the model is.
# Then serves the student on 127.0.0.1:8000 and the Gradio demo on 127.0.0.1:7860 (DEMO_SERVE=0 skips).
# Re-running resumes (finished stages are skipped). DEMO_NAME / DEMO_OUT / DEMO_ARGS override.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${DEMO_OUT:-$PWD/runs}
NAME=${DEMO_NAME:-demo-cpu}
mkdir -p "$OUT"

echo "== starting a local Ray head on 127.0.0.1"
scripts/ray-head.sh start >/dev/null
trap 'echo "== stopping the Ray head"; scripts/ray-head.sh stop' EXIT INT TERM
# shellcheck disable=SC1091
source .ray-head/env
echo "   $RAY_API_SERVER_ADDRESS (loopback only; token auth on, token in ${RAY_AUTH_TOKEN_PATH:-~/.ray/auth_token})"

echo "== ray job submit: jobs/pipeline.py jobs/configs/demo-cpu.yaml"
.venv/bin/ray job submit --working-dir . -- python jobs/pipeline.py jobs/configs/demo-cpu.yaml \
  "name=$NAME" "output_dir=$OUT" ${DEMO_ARGS:-}

RUN="$OUT/$NAME"
echo
sed -n '/^- /p;/^| /p' "$RUN/report.md"
echo
echo "report: $RUN/report.md  (+ report.json, plots/)"
echo "model:  $RUN/model  (SentenceTransformer(path) loads it)"

if [ "${DEMO_SERVE:-1}" = 1 ]; then
  echo
  echo "== serving the student (API) and the search demo (UI); Ctrl-C stops everything"
  # The teacher's cross-encoder reranks in the demo only if it passed its gate on dev on its own
  # (/rerank serves the cross-encoder's scores: a gate passed only fused with the bi-encoder is not that).
  RERANK=(--cross-encoder "$RUN/teacher/cross-encoder" --reranker-cpus 0.3)
  if ! .venv/bin/python - "$RUN/teacher/cross_encoder_gate.json" <<'PY'
import json, pathlib, sys
gate = pathlib.Path(sys.argv[1])
verdict = json.loads(gate.read_text()) if gate.is_file() else {"passed": True}
sys.exit(0 if verdict["passed"] and not verdict.get("fusion") else 1)
PY
  then
    RERANK=()
    echo "   no reranker: the cross-encoder alone reranks dev worse than the bi-encoder (report.md says why)"
  fi
  .venv/bin/embedray serve "$RUN/model" --corpus "$RUN/data" --base-model minilm-l6 "${RERANK[@]}" --ui \
    --cpus-per-replica 0.5   # student + base model (+ reranker) fit a 2-CPU head
fi
