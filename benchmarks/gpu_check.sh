#!/usr/bin/env bash
# The checks and benchmarks for one lent GPU, in priority order (what the last lease left unmeasured first),
# each under its own time limit, inside one overall budget (a lease is 15 minutes of device time, start
# included). Run on the device machine:
#
#   run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#                --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#                bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=570)
#
# `make gpu-carry` makes both, here, first. .whl holds what the device image lacks (zarr 3.1.6, numcodecs, donfig, google-crc32c; cp312 wheels) and
# .gpu/pretrained_saes.yaml sae-lens's catalog (score_bench's extrapolation reads it; sae-lens is not there).
# Ray is not there either (its wheel is larger than what a call carries), so scoring runs in process
# (score_bench --local) and extraction's bare loop alone (extract_bench --bare-only).
# GPU_CHECK_STEPS="seed_bench score_bench" runs only the steps named; GPU_CHECK_BUDGET the overall seconds.
# Everything lands in $OUT/gpu_results.tgz (each step's log and JSON) and the table on stdout.
set -u
OUT=${OUT:-/tmp/gpu_check_out}
R=$OUT/gpu_results
mkdir -p "$R"
BUDGET=${GPU_CHECK_BUDGET:-530}
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
  local t=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$R/$name.log" 2>&1
  echo "=== $name: rc $? in $(( $(date +%s) - t ))s"
  tail -n 18 "$R/$name.log"
}

step env 20 bash -c 'nvidia-smi -L; python3 -c "import torch, triton, zarr, actstore.kernels.jumprelu_probe as k;
print(torch.__version__, triton.__version__, zarr.__version__, torch.cuda.get_device_name())"'
step kernel_tests 200 python3 -m pytest -v -p no:cacheprovider --timeout 60 --durations 0 tests/test_kernels.py
step score_profile 90 python3 benchmarks/score_profile.py --device cuda --widths 16k,65k \
  --out "$R/score_profile.json"
step seed_bench 120 python3 benchmarks/seed_bench.py --widths 16k,65k --vocab-rows 4096 --repeat 3 --device cuda \
  --out "$R/seed_bench.json"
step kernel_bench 150 python3 benchmarks/kernel_bench.py --widths 16k,65k,262k --tokens 4096,16384 --groups 1,5 \
  --reps 100 --out "$R/kernel_bench.json"
step score_bench 100 python3 benchmarks/score_bench.py --local --widths 16k,65k --layers 3,12 --scratch /tmp/score_scratch \
  --out "$R/score_bench.json"
step extract_full_size 70 python3 benchmarks/extract_bench.py --full-size --bare-only --repeats 1 \
  --context-rows 16384 --batch-size 128 --out "$R/extract_bench_full_size.json"
step kernel_bench_1m 40 python3 benchmarks/kernel_bench.py --widths 1m --tokens 16384 --groups 1 --reps 100 \
  --out "$R/kernel_bench_1m.json"
tar czf "$OUT/gpu_results.tgz" -C "$OUT" gpu_results && rm -rf "$R"
echo "=== done in $(( $(date +%s) - START ))s"
