#!/usr/bin/env bash
# Issue 23's checks for one lent GPU, in priority order, each under its own time limit, inside one overall budget
# that fits a single 10-minute device call (a lease is 15 minutes of device time, start included):
#   1. the kernel tests on CUDA, compiled (tests/test_kernels.py and any tests/test_*recheck*.py);
#   2. kernel_bench: the kernel alone, its launcher, the recheck path, fp32, torch and cuBLAS, 4k/16k tokens x
#      16k/65k latents, medians of 7 interleaved samples;
#   3. score_bench: 2 layers x 5 SAEs at 16k and 65k, end to end in process, before (d38bcc4) and after.
# Prepare here, once: `make gpu-carry` makes .whl, .gpu/pretrained_saes.yaml and .gpu/baseline, the baseline's
# source tree (`git archive d38bcc4`: the device's copy of the repository may lack .git, so score_bench cannot
# make its worktree there); then run on the device machine:
#
#   run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#                --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#                bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=590)
#
# .whl holds what the device image lacks (zarr, numcodecs, donfig, google-crc32c; cp312 wheels), .gpu sae-lens's
# catalog (score_bench's extrapolation reads it; sae-lens is not there) and the baseline tree. Ray is not there
# either, so scoring runs in process (score_bench's driver calls run_score with local=True).
# GPU_CHECK_STEPS="kernel_bench score_bench" runs only the steps named; GPU_CHECK_BUDGET the overall seconds.
# Everything lands in $OUT/gpu_results.tgz (each step's log and JSON) and the tables on stdout.
set -u
OUT=${OUT:-/tmp/gpu_check_out}
R=$OUT/gpu_results
mkdir -p "$R"
BUDGET=${GPU_CHECK_BUDGET:-565}
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p /tmp/site/sae_lens && touch /tmp/site/sae_lens/__init__.py && cp .gpu/pretrained_saes.yaml /tmp/site/sae_lens/
[ -e actstore/kernels ] || ln -s ../kernels actstore/kernels  # the package layout pyproject's package-dir gives

step() {  # step NAME LIMIT_S COMMAND...: run under min(LIMIT, what is left), log to $R/NAME.log
  local name=$1 limit=$2; shift 2
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then return; fi  # a chosen few
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 25 ]; then echo "=== $name: skipped, ${left}s left"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s)"
  local t
  t=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$R/$name.log" 2>&1
  echo "=== $name: rc $? in $(( $(date +%s) - t ))s"
  tail -n 24 "$R/$name.log"
}

# the code before issue 23 for score_bench: a worktree where git has the commit, else the carried tree
BASELINE=(--no-baseline)
if git rev-parse -q --verify "d38bcc4^{commit}" > /dev/null 2>&1; then
  BASELINE=(--baseline d38bcc4)
elif [ -d .gpu/baseline/actstore ]; then
  [ -e .gpu/baseline/actstore/kernels ] || ln -s ../kernels .gpu/baseline/actstore/kernels
  BASELINE=(--baseline-dir .gpu/baseline)
else
  echo "=== no baseline: neither git nor .gpu/baseline here, score_bench times the current code alone"
fi
mapfile -t RECHECK_TESTS < <(ls tests/test_*recheck*.py 2> /dev/null)

step env 20 bash -c 'nvidia-smi -L; python3 -c "import torch, triton, zarr, actstore.kernels.jumprelu_probe as k;
print(torch.__version__, triton.__version__, zarr.__version__, torch.cuda.get_device_name())"'
step kernel_tests 150 python3 -m pytest -q -p no:cacheprovider --timeout 90 --durations 15 tests/test_kernels.py \
  "${RECHECK_TESTS[@]}"
step kernel_bench 130 python3 benchmarks/kernel_bench.py --widths 16k,65k --tokens 4096,16384 --samples 7 \
  --out "$R/kernel_bench.json"
step score_bench 300 python3 benchmarks/score_bench.py --widths 16k,65k --layers 2 --saes-per-layer 5 \
  "${BASELINE[@]}" --scratch /tmp/score_scratch --out "$R/score_bench.json"
tar czf "$OUT/gpu_results.tgz" -C "$OUT" gpu_results && rm -rf "$R"
echo "=== done in $(( $(date +%s) - START ))s"
