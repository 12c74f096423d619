#!/usr/bin/env bash
# The GPU rows of docs/performance.md in one call on a lent device machine (see docs/performance.md, "GPU rows").
#
#   here, once:      bash tools/gpu_rows.sh --wheels
#                    (downloads the wheel of diffusers, which the device image lacks, into .whl/, git-ignored;
#                    the rows import neither PyAV nor pyloudnorm, so those stay behind)
#   on the device:   run(command="bash tools/gpu_rows.sh", carry=[".whl"], timeout_s=600)
#
# It runs `python -m emo_model bench --rows emo,emo-memory` on CUDA at 512x512 (the full-size EMO config, random
# weights, bf16): the paper's recipe (40 DDIM steps + CFG) for EMO_SECONDS of audio with the fast mode beside it,
# then the peak GPU memory for 10 s and 60 s of audio. The table and the JSON land in $OUT (the device tool brings
# them back). Override the lengths with EMO_SECONDS / MEMORY_SECONDS to fit the time that is left.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    version="$(.venv/bin/python -c 'import diffusers; print(diffusers.__version__)')"
    rm -rf .whl && mkdir .whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "diffusers==$version" importlib_metadata
    ls -l .whl
    exit 0
fi

out="${OUT:-/tmp/gpu-rows-out}"  # $OUT on the device machine; never inside the checkout
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
python3 - <<'EOF' 2>&1 | tee "$out/machine.txt"
import torch, diffusers, transformers
print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF
python3 -m emo_model bench --rows emo,emo-memory --device cuda --emo-seconds "${EMO_SECONDS:-10}" \
    --memory-seconds "${MEMORY_SECONDS:-10,60}" --json "$out/gpu_rows.json" 2>&1 | tee "$out/gpu_rows.txt"
