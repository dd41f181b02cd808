#!/bin/bash
# `make gpu-check` on a lent GPU machine that has no internet and takes at most 64 MiB per call (docs/gpu-check.md):
# the wheels this project needs beyond the machine's image and the SmolLM2 weights (gpu_bundle.py parts) travel
# over several calls, wait in /tmp between them, and the check runs from there. Run from the repository root:
#   prepare (here, with pip's index and `make model` done) write .whl/ and .gpu/c1..c3, each call's load < 64 MiB
#   setup  install .whl/*.whl into /tmp, keep .gpu/c1 (meta + first part), check the imports, name the GPU
#   stash  keep .gpu/c2 and .gpu/c3 (more parts, the BIG-bench files)
#   bench  bench-step in bf16 and NF4 on seeded random weights of SmolLM2's shape (a speed benchmark)
#   round  one 10-client budget=gpu round on the real weights (random ones, said loudly, if a part is missing)
set -u
W=/tmp/amole-w
SITE=/tmp/amole-site
PY=${PY:-python3}
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AMOLE_CACHE=/tmp/amole-cache
export TOKENIZERS_PARALLELISM=false

stash() {
    mkdir -p $W
    for d in "$@"; do [ -d "$d" ] && cp -r "$d"/. $W/; done
    for t in $W/*.tar.gz; do [ -f "$t" ] && tar xzf "$t" -C $W && rm "$t"; done
    echo "kept in $W: $(ls $W | tr '\n' ' ')"
}

random_model() {
    [ -f /tmp/smollm2-random/model.safetensors ] || $PY tests/benchmarks/gpu_bundle.py random --pieces $W --out /tmp/smollm2-random
}

# What the lent H200's image (Python 3.12, torch 2.11+cu130, transformers 5.17, no Flower) lacks or has in another
# version, as seen on 2026-12-04: flwr without Ray and the modules it imports, our pins, the scorers.
WHEELS="alembic==1.20.1 annotated-types==0.8.0 bitsandbytes==0.50.2 cffi==2.1.1 cryptography==50.0.2
defusedxml==0.7.1 dill==0.4.1 fastapi==0.138.2 flwr==1.41.0 grpcio-health-checking==1.81.1 highspy==1.15.1
httpcore2==2.16.2 httpx2==2.16.2 hydra-core==1.3.8 iterators==0.0.2 mako==1.4.3 nltk==3.10.4 omegaconf==2.3.1
peft==0.21.2 protobuf==6.33.6 pycryptodome==3.24.1 pydantic-core==2.50.5 pydantic==2.14.4 pyparsing==3.3.3
rouge==1.0.1 sqlalchemy==2.1.9 starlette==1.3.1 tomli-w==1.2.0 tomli==2.5.0 transformers==5.23.0 truststore==0.10.5
typer==0.20.1 typing-inspection==0.4.5"
SDISTS="rouge-score==0.1.2 antlr4-python3-runtime==4.9.3"  # no wheels on PyPI: built here (pure Python)
TASKS="hyperbaton sports_understanding object_counting word_sorting navigate date_understanding
logical_fallacy_detection winowhy word_unscrambling implicatures"  # conf/scenario/bigbench_tasks.yaml

prepare() {  # $1: the converted model folder, $2: a folder of BIG-bench <task>.json files
    local model=${1:?model folder} tasks=${2:?BIG-bench folder} tmp PY=${PY_HERE:-.venv/bin/python} root=$PWD
    tmp=$(mktemp -d)
    rm -rf .whl .gpu && mkdir -p .whl .gpu/c1 .gpu/c2 .gpu/c3 || return 1
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $WHEELS || return 1
    $PY -m pip wheel -q --no-deps -w .whl $SDISTS || return 1
    # bitsandbytes ships a library per CUDA version (43 MB); the machine's torch is built for CUDA 13.
    (cd "$tmp" && mkdir bnb && cd bnb && unzip -q "$root"/.whl/bitsandbytes-*.whl \
        && find . -name "libbitsandbytes_*.so" ! -name "*cpu.so" ! -name "*cuda13?.so" -delete \
        && sed -i '/libbitsandbytes_\(cuda1[12]\|rocm\|xpu\)/d' ./*.dist-info/RECORD \
        && rm "$root"/.whl/bitsandbytes-*.whl && zip -q -r -X "$root"/.whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl .) \
        || return 1
    $PY tests/benchmarks/gpu_bundle.py pack --model-dir "$model" --out "$tmp/bundle" --part-mb 15,57.5 || return 1
    (cd "$tmp/bundle" && tar czf "$root/.gpu/c1/meta.tar.gz" $(ls | grep -v '^part-')) || return 1
    mv "$tmp/bundle/part-0" .gpu/c1/ && mv "$tmp/bundle/part-1" .gpu/c2/ && mv "$tmp/bundle/part-2" .gpu/c3/ || return 1
    mkdir "$tmp/bigbench" && for t in $TASKS; do cp "$tasks/$t.json" "$tmp/bigbench/" || return 1; done
    tar czf .gpu/c3/bigbench.tar.gz -C "$tmp" bigbench && rm -rf "$tmp"
    for c in c1 c2 c3; do
        echo "$c: $(du -cb .gpu/$c $([ $c = c1 ] && echo .whl) | tail -1 | cut -f1) bytes besides the working tree"
    done
}

case "${1:-}" in
prepare)
    prepare "${2:-$HOME/.cache/amole/models/smollm2-135m}" "${3:-../shared/data/bigbench}"
    ;;
setup)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl || exit 1
    stash .gpu/c1
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
    $PY - <<'EOF'
import importlib
for name in ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "flwr.app", "flwr.clientapp",
             "flwr.serverapp", "hydra", "highspy", "rouge_score", "rouge", "scipy", "google.protobuf", "grpc"]:
    try:
        mod = importlib.import_module(name)
        print(f"import {name}: ok {getattr(mod, '__version__', '')}")
    except Exception as err:  # noqa: BLE001 - report every missing piece at once
        print(f"import {name}: FAILED {type(err).__name__}: {err}")
EOF
    ;;
stash)
    stash .gpu/c2 .gpu/c3
    ;;
bench)
    random_model && $PY tests/benchmarks/gpu_check.py --model-dir /tmp/smollm2-random --skip-round "${@:2}"
    ;;
round)
    if $PY tests/benchmarks/gpu_bundle.py unpack --pieces $W --out /tmp/smollm2; then
        M=/tmp/smollm2
    else
        echo "NOTE: the real weights are incomplete here: the round runs on RANDOM weights (scores mean nothing)"
        random_model
        M=/tmp/smollm2-random
    fi
    $PY tests/benchmarks/gpu_check.py --model-dir $M --bigbench-dir $W/bigbench --skip-bench "${@:2}"
    ;;
*)
    echo "usage: $0 prepare [MODEL_DIR BIGBENCH_DIR] | setup | stash | bench [--no-whole-model] | round [gpu_check overrides]" >&2
    exit 2
    ;;
esac
