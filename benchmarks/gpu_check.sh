#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py; benchmarks/README.md, "GPU check").
#
# 1. Here, with PyPI reachable, once: fetch the wheels the GPU machine lacks, at the
#    versions installed here, for its Python (3.12, x86-64 manylinux), into
#    benchmarks/cache/wheels (git-ignored, about 21 MB):
#        bash benchmarks/gpu_check.sh --download
# 2. There (no network; torch and timm are installed, the repository is the working
#    directory): install those wheels into a temporary folder and run the check:
#        bash benchmarks/gpu_check.sh --wheels benchmarks/cache/wheels --output "$OUT/gpu_check.json"
# 3. Here, as tests/benchmarks/test_gpu_check.py does (seconds, figures meaningless):
#        bash benchmarks/gpu_check.sh --device cpu --quick --output /tmp/gpu_check.json
#
# Every other argument goes to gpu_check.py. PYTHON picks the interpreter
# (default python3); GPU_PYTHON the Python version the wheels are for (3.12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
WHEELS_DIR=benchmarks/cache/wheels
# what the GPU machine lacks (torch, torchvision, numpy, safetensors, PyYAML,
# scikit-learn, tqdm... are there); timm too, so that it runs this machine's version
PACKAGES="pytorch-metric-learning record-keeper faiss-cpu timm"

wheels=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --download)
            pins=$("$PYTHON" -c 'import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' $PACKAGES)
            # the GPU ablation's backbone (ablation_cub100_gpu.py): its pinned wheels
            pins="$pins $(grep -E '^[A-Za-z0-9_.-]+==' benchmarks/requirements.txt | tr '\n' ' ')"
            mkdir -p "$WHEELS_DIR"
            platforms=""
            for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
                     manylinux2014_x86_64 manylinux1_x86_64 any; do
                platforms="$platforms --platform $p"
            done
            # shellcheck disable=SC2086
            "$PYTHON" -m pip download --no-deps --only-binary=:all: \
                --python-version "${GPU_PYTHON:-3.12}" --implementation cp $platforms \
                -d "$WHEELS_DIR" $pins
            ls -l "$WHEELS_DIR"
            exit 0
            ;;
        --wheels)
            wheels=$2
            shift 2
            ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done

if [ -n "$wheels" ]; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: no wheels in $wheels; run 'bash benchmarks/gpu_check.sh --download' where PyPI is reachable" >&2
        exit 2
    fi
    site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py ${args[@]+"${args[@]}"}
