#!/usr/bin/env bash
# Build three throwaway virtualenvs for peer baselines, OUTSIDE the project's .venv:
#
#   $PEER_VENVS/infinity  infinity-emb 0.0.78 (michaelfeil's embedding server), engines torch + optimum.
#       Separate because infinity-emb 0.0.78 pins sentence-transformers<4, numpy<2, click<8.2,
#       rich<14, typer<0.13, uvicorn<0.33, and ST 3.x pins transformers<5 (=> huggingface_hub<1);
#       the project runs sentence-transformers 6.3.0 (needs transformers>=5), transformers 5.24
#       (pyproject: >=4.56), numpy 2.4.6, click 8.5.1, rich 15, typer 0.29, uvicorn 0.55,
#       huggingface_hub 2.4.
#   $PEER_VENVS/st-onnx   sentence-transformers 5.7.0 with its ONNX backend (optimum-onnx).
#       Separate because the newest optimum-onnx on the registry (0.1.0) pins transformers<4.58
#       and optimum~=2.1.0, while ST 6.x needs transformers>=5: "sentence-transformers[onnx]==6.3.0"
#       is ResolutionImpossible, so the ONNX backend needs ST 5.x + transformers 4.57.x, which
#       would downgrade the project's transformers 5.24 / ST 6.3.0.
#   $PEER_VENVS/st-openvino   sentence-transformers 6.3.0 with its OpenVINO backend (optimum-intel).
#       Separate because optimum-intel 2.2.0 pins transformers<5.6 (the project runs 5.25) and
#       requires torchvision, whose registry wheel is built for another torch and breaks
#       `import transformers` ("operator torchvision::nms does not exist"); it is uninstalled
#       after the install (nothing on the text path imports it) and `pip check`'s complaint
#       about exactly that is the one it tolerates.
#
# torch stays the local CPU wheel torch==2.13.0 (installed first, then used as a constraint:
# any other torch spec would pull the CUDA wheels). Idempotent: a venv whose stamp file lists
# the same pins is skipped; a half-built one (no stamp) is rebuilt. One venv failing does not stop the other;
# the script exits 1 at the end if any failed.
#
# Usage:  bash bench/peer_venvs.sh            # all three
#         bash bench/peer_venvs.sh st-onnx    # only the named ones
#
# Serving a local sentence-transformers folder with infinity on CPU (export HF_HUB_OFFLINE=1
# DO_NOT_TRACK=1), OpenAI-style route POST /embeddings {"model": NAME, "input": [...]}, also
# GET /health and /models; --batch-size (default 32), --engine torch|optimum|ctranslate2:
#   $PEER_VENVS/infinity/bin/infinity_emb v2 --model-id /path/to/folder --served-model-name NAME \
#       --host 127.0.0.1 --port 7997 --device cpu --engine torch --batch-size 32 --no-compile
# --engine optimum needs an .onnx file already in the folder, and with optimum-onnx 0.1.0 it only
# finds it when the file sits at the folder's root and infinity runs from inside it with
# --model-id . (an absolute path fails: "Could not find any ONNX files with target file name
# /abs/.../x.onnx"); add --pooling-method mean.
#
# ST ONNX backend (exports model.onnx on the fly when the folder has none; work on a copy):
#   from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
#   m = SentenceTransformer(copy, backend="onnx"); export_dynamic_quantized_onnx_model(m, "avx512_vnni", copy)
#   q = SentenceTransformer(copy, backend="onnx", model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
set -euo pipefail

ROOT="${PEER_VENVS:-/tmp/embedray-peer-venvs}"
PYTHON="${PYTHON:-python3.11}"
TORCH_PIN="torch==2.13.0"
STAMP=".embedray-peer-venv.stamp"

INFINITY_PINS=(
  "infinity-emb[server,torch,optimum]==0.0.78"
  "sentence-transformers==3.4.1" "transformers==4.57.6" "tokenizers==0.22.2"
  "huggingface_hub==0.36.2" "numpy==1.26.4"
  "optimum==2.1.0" "optimum-onnx[onnxruntime]==0.1.0" "onnxruntime==1.32.0" "onnx==1.23.2"
  "fastapi==0.165.0" "uvicorn[standard]==0.32.1" "click==8.1.8" "typer==0.12.5" "rich==13.9.4"
)
INFINITY_CHECK='import infinity_emb, sentence_transformers, optimum.onnxruntime; print("infinity_emb", infinity_emb.__version__, "sentence-transformers", sentence_transformers.__version__)'

ST_ONNX_PINS=(
  "sentence-transformers[onnx]==5.7.0"
  "transformers==4.57.6" "tokenizers==0.22.2" "huggingface_hub==0.36.2" "numpy==2.4.6"
  "optimum==2.1.0" "optimum-onnx[onnxruntime]==0.1.0" "onnxruntime==1.32.0" "onnx==1.23.2"
)
# nncf and datasets: export_static_quantized_openvino_model (static int8) needs both; datasets'
# newest release pulls huggingface_hub 2.x, which transformers 5.5 and optimum-intel refuse.
ST_OPENVINO_PINS=("sentence-transformers[openvino]==6.3.0" "optimum-intel==2.2.0" "openvino==2026.4.1"
                  "nncf==3.4.0" "datasets==5.0.1" "huggingface_hub==1.21.0")
ST_OPENVINO_CHECK='import sentence_transformers, openvino, optimum.intel, nncf, datasets; from sentence_transformers import export_static_quantized_openvino_model; print("sentence-transformers", sentence_transformers.__version__, "openvino", openvino.__version__, "nncf", nncf.__version__)'

ST_ONNX_CHECK='import sentence_transformers, optimum.onnxruntime, onnxruntime; from sentence_transformers import export_dynamic_quantized_onnx_model; print("sentence-transformers", sentence_transformers.__version__, "onnxruntime", onnxruntime.__version__)'

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

# pip, quiet; drops the per-package "Location ... is ignored" noise some local index setups print.
pipq() {
  "$@" -q 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

build() {  # build NAME CHECK_CODE PIN...   ($DROP: packages to uninstall after the install)
  local name=$1 check=$2; shift 2
  local venv="$ROOT/$name"
  if [[ -f "$venv/$STAMP" ]] && [[ "$(tail -n +2 "$venv/$STAMP")" == "$(printf '%s\n' "$TORCH_PIN" "$@")" ]]; then
    echo "[$name] up to date ($venv/$STAMP)"; return 0
  fi
  echo "[$name] building $venv"
  local t0=$SECONDS
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  pipq "$venv/bin/pip" install "$TORCH_PIN"
  pipq "$venv/bin/pip" install -c "$CONSTRAINTS" "$@"
  if [[ -n "${DROP:-}" ]]; then
    pipq "$venv/bin/pip" uninstall -y $DROP
    { "$venv/bin/pip" check || true; } | { grep -v "requires ${DROP}, which is not installed" || true; } | { ! grep .; }
  else
    "$venv/bin/pip" check
  fi
  "$venv/bin/python" -c "$check"
  {
    echo "built $(date -u +%FT%TZ) in $((SECONDS - t0))s with $("$PYTHON" --version)"
    printf '%s\n' "$TORCH_PIN" "$@"
  } > "$venv/$STAMP"
  echo "[$name] done in $((SECONDS - t0))s"
}

mkdir -p "$ROOT"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "$TORCH_PIN" > "$CONSTRAINTS"

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(infinity st-onnx st-openvino)
failed=()
for t in "${targets[@]}"; do
  # Each build runs in its own errexit subshell (not under `||`, which would switch errexit off).
  set +e
  case "$t" in
    infinity) ( set -e; build infinity "$INFINITY_CHECK" "${INFINITY_PINS[@]}" ) ;;
    st-onnx)  ( set -e; build st-onnx "$ST_ONNX_CHECK" "${ST_ONNX_PINS[@]}" ) ;;
    st-openvino) ( set -e; DROP=torchvision build st-openvino "$ST_OPENVINO_CHECK" "${ST_OPENVINO_PINS[@]}" ) ;;
    *) echo "unknown venv '$t' (infinity, st-onnx, st-openvino)" >&2; false ;;
  esac
  rc=$?
  set -e
  [[ $rc -eq 0 ]] || { echo "[$t] FAILED (exit $rc)" >&2; failed+=("$t"); }
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
