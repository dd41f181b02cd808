#!/bin/bash
# `make gpu-check` on a lent GPU machine that has no internet and takes at most 64 MiB per call (docs/gpu-check.md):
# the wheels this project needs beyond the machine's image and the SmolLM2 weights (gpu_bundle.py parts) travel
# over several calls, wait in /tmp between them, and the check runs from there. Run from the repository root:
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

case "${1:-}" in
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
    random_model && $PY tests/benchmarks/gpu_check.py --model-dir /tmp/smollm2-random --skip-round
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
    echo "usage: $0 setup | stash | bench | round [gpu_check overrides]" >&2
    exit 2
    ;;
esac
