#!/usr/bin/env bash
# Profile avemo on a Jetson with fixed clocks and a tegrastats log beside the results.
#
#   sudo scripts/jetson/profile_on_jetson.sh models/ bench-orin/ [extra profile options]
#
# Written from NVIDIA's Jetson documentation (nvpmodel, jetson_clocks, tegrastats);
# not yet run on a device by the avemo team (no Jetson here).
set -euo pipefail
models=${1:?usage: profile_on_jetson.sh MODELS OUT [profile options]}
out=${2:?usage: profile_on_jetson.sh MODELS OUT [profile options]}
shift 2
mkdir -p "$out"

# Record the power mode and clocks the numbers were measured at, then pin them.
nvpmodel -q > "$out/nvpmodel-before.txt" 2>&1 || true
jetson_clocks --store "$out/clocks-before.conf"
nvpmodel -m "${AVEMO_NVPMODEL:-0}"   # 0 = MAXN on most modules; set AVEMO_NVPMODEL for others
jetson_clocks                         # lock CPU/GPU/EMC at their maximum for this mode
nvpmodel -q > "$out/nvpmodel.txt" 2>&1
jetson_clocks --show > "$out/clocks.txt"

# GPU / CPU / EMC load, temperatures and power rails every 100 ms during the run.
tegrastats --interval 100 --logfile "$out/tegrastats.log" &
trap 'tegrastats --stop; jetson_clocks --restore "$out/clocks-before.conf"' EXIT

python3 "$(dirname "$0")/../profile_latency.py" "$models" --backend ort,trt --precision fp16,int8 \
  --out "$out" "$@"
