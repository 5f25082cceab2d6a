source scripts/gpu_env.sh
export SAGEGEN_TEST_REPORT=$OUT/runtime_accuracy.json
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 400 python3 -m pytest -m gpu -q -p no:cacheprovider --durations=8 -o addopts="" tests/ > $OUT/pytest_gpu.log 2>&1; echo "pytest rc=$?"
grep -E "passed|failed|error" $OUT/pytest_gpu.log | tail -3
grep -E "^(FAILED|ERROR)" $OUT/pytest_gpu.log | head -30
timeout 120 python3 -m sagegen accuracy --device cuda --n 4096 --d 128 --json $OUT/accuracy.json > $OUT/accuracy.txt 2>&1; echo "accuracy rc=$?"
timeout 150 compute-sanitizer --tool memcheck python3 scripts/sanitize_small.py > $OUT/memcheck.log 2>&1; echo "memcheck rc=$?"; tail -3 $OUT/memcheck.log
