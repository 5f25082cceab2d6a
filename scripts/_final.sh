source scripts/gpu_env.sh
export SAGEGEN_TEST_REPORT=$OUT/runtime_accuracy.json
timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider --durations=8 -o addopts="" tests/ > $OUT/pytest_gpu.log 2>&1; echo "pytest rc=$?"
grep -E "passed|failed|error" $OUT/pytest_gpu.log | tail -2
grep -E "^(FAILED|ERROR)" $OUT/pytest_gpu.log | head -20
timeout 100 compute-sanitizer --tool memcheck --target-processes application-only python3 scripts/sanitize_small.py --few > $OUT/memcheck.log 2>&1; echo "memcheck rc=$?"; tail -4 $OUT/memcheck.log
