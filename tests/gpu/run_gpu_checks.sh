#!/bin/sh
# Run the CUDA checks (tests marked gpu) and print a summary. Needs a CUDA GPU, torch with
# CUDA, and mpsctl's serve dependencies (pip install -e '.[serve,test,nvidia]').
#   tests/gpu/run_gpu_checks.sh [pytest args...]
set -u
cd "$(dirname "$0")/../.."
python3 - <<'PY'
import torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA available: {ok}")
if ok:
    free, total = torch.cuda.mem_get_info(0)
    print(f"GPU 0: {torch.cuda.get_device_name(0)}, {total / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
python3 -m pytest -m gpu tests/gpu -v -p no:cacheprovider -rA "$@" > /tmp/mpsctl-gpu-checks.log 2>&1
status=$?
grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|^tests/gpu" /tmp/mpsctl-gpu-checks.log | sort -u
if [ $status -ne 0 ]; then
    echo "--- failures ---"
    sed -n '/= FAILURES =/,/short test summary/p' /tmp/mpsctl-gpu-checks.log | tail -80
fi
tail -1 /tmp/mpsctl-gpu-checks.log
echo "gpu checks: exit $status"
exit $status
