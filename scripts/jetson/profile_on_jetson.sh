#!/usr/bin/env bash
# Profile avemo on a Jetson with fixed clocks and a tegrastats log beside the results.
#
#   scripts/jetson/profile_on_jetson.sh models/ bench-orin/ [extra profile options]
#
# Run it as yourself, from the virtualenv with avemo (or set PYTHON): only nvpmodel, jetson_clocks
# and tegrastats run under sudo (it asks for the password once), so the profiler runs in the
# virtualenv's Python, not the system's. The power mode and clocks in force before are restored at
# the end, also after a failure or Ctrl-C.
#
# Written from NVIDIA's Jetson documentation (nvpmodel, jetson_clocks, tegrastats);
# not yet run on a device by the avemo team (no Jetson here).
set -euo pipefail
models=${1:?usage: profile_on_jetson.sh MODELS OUT [profile options]}
out=${2:?usage: profile_on_jetson.sh MODELS OUT [profile options]}
shift 2
python=${PYTHON:-$(command -v python)}
if [ "$(id -u)" = 0 ] && [ -z "${PYTHON:-}" ]; then
    echo "run this script as yourself (not under sudo): sudo would run the system Python, not the virtualenv's" >&2
    exit 2
fi
mkdir -p "$out"

# Record the power mode and clocks in force, so the end restores them.
sudo nvpmodel -q > "$out/nvpmodel-before.txt" 2>&1 || true
previous_mode=$(grep -Eo '^[0-9]+$' "$out/nvpmodel-before.txt" | tail -n 1 || true)
sudo jetson_clocks --store "$out/clocks-before.conf"
restore() {
    sudo tegrastats --stop || true
    sudo jetson_clocks --restore "$out/clocks-before.conf" || true
    if [ -n "$previous_mode" ]; then sudo nvpmodel -m "$previous_mode" || true; fi
}
trap restore EXIT

sudo nvpmodel -m "${AVEMO_NVPMODEL:-0}"   # 0 = MAXN on most modules; set AVEMO_NVPMODEL for others
sudo jetson_clocks                         # lock CPU/GPU/EMC at their maximum for this mode
sudo nvpmodel -q > "$out/nvpmodel.txt" 2>&1
sudo jetson_clocks --show > "$out/clocks.txt"

# GPU / CPU / EMC load, temperatures and power rails every 100 ms during the run.
sudo tegrastats --interval 100 --logfile "$out/tegrastats.log" &

"$python" "$(dirname "$0")/../profile_latency.py" "$models" --backend ort,trt --precision fp16,int8 \
  --out "$out" "$@"
