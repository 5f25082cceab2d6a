source scripts/gpu_env.sh
python3 scripts/gpu_check.py --filter 'attn_mma_*o_bf16_d128*qg_warp*' --time --time-n 8192 --out $OUT 2>&1 | tail -12
V1=attn_mma_sm90a_qk_i8_pv_f16_acc_f32_o_bf16_d128_m64_n64_w4_s2_b3_qg_warp_kg_block_full
for V in $V1; do
  ncu --clock-control none -k regex:attn_mma -c 1 --section SpeedOfLight --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis --section InstructionStats --section SchedulerStats python3 scripts/profile_variant.py $V --iters 1 > $OUT/$V.ncu 2>&1
  grep -E "Duration|Warp Cycles Per Issued|Achieved Occupancy|Issue Slots|Eligible|Active Warps" $OUT/$V.ncu | head -30
done
