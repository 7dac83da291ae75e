"""scripts/bench_host.py end to end on the tiny model, ONNX Runtime and the TensorRT doubles: every host stage it
names is found in this checkout and accounted for (times are not checked: no timed tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FAKES

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_host.py"


def test_host_cost_is_split_by_stage_on_both_backends(colearn_export, tmp_path):
    out = tmp_path / "host.json"
    env = {**os.environ, "PYTHONPATH": str(FAKES), "AVEMO_DOUBLE_GPUS": "NVIDIA H100 80GB HBM3:9.0:81920:0"}
    args = ["--backend", "ort,trt", "--calls", "1", "--rounds", "2", "--warmup", "0", "--json", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), str(colearn_export[0]), *args], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "| trt | 4 x 30-s batch |" in done.stdout.decode()
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["ort", "trt"]
    for per in results.values():
        assert sorted(per) == ["4 x 30-s batch", "live 5-s window, batch 1"]
        for r in per.values():
            assert r["calls"] == 2
            assert None not in r["stages_us"].values()  # every stage found
            assert r["graph_us"]["p50"] > 0 and r["host_us"]["p50"] > 0
            copied = r["bytes_copied"]
            assert copied["features to arrays"] > 0 and copied["fill_batch"] > 0
            # one host pass into the arrays the backend reads (TensorRT: its page-locked buffers): no batch
            # made first and staged after
            assert copied["batch_inputs"] == copied["staging"] == 0
