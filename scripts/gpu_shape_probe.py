"""Why is the first GPU epoch slow? Time training steps at new input shapes vs the same shape again.

    python scripts/gpu_shape_probe.py      # needs a CUDA GPU and avemo[train]

Every clip length gives the CNN and the audio convolutions a new input shape; cuDNN chooses (and may
compile) kernels per shape. Prints the median time of a forward+backward step at a shape never seen
before and at the same shape again, for cuDNN's default, without cuDNN, with cudnn.benchmark and with
channels-last memory. Results: docs/BENCHMARKS.md ("Training on a GPU").
"""

import statistics
import time
from collections.abc import Callable

import torch

from avemo.config import PRESETS
from avemo.train.mobilenet import mobilenet_v3_features
from avemo.train.model import CrossModalTransformer


def probe(label: str, step: Callable[[int], None], sizes: list[int]) -> None:
    """Run ``step`` at each size twice: the first call meets a new shape, the second the same one."""
    first: list[float] = []
    again: list[float] = []
    for n in sizes:
        for out in (first, again):
            torch.cuda.synchronize()
            t = time.perf_counter()
            step(n)
            torch.cuda.synchronize()
            out.append(1e3 * (time.perf_counter() - t))
    print(
        f"{label}: new shape {statistics.median(first):.0f} ms (max {max(first):.0f}), "
        f"same shape again {statistics.median(again):.1f} ms; {len(sizes)} shapes",
        flush=True,
    )


def main() -> None:
    dev = torch.device("cuda")
    print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name())
    cnn = mobilenet_v3_features("mobilenet_v3_small").to(dev).train()

    def cnn_step(frames: int) -> None:
        cnn(torch.randn(frames, 3, 128, 128, device=dev)).mean().backward()

    cnn_step(64)
    cnn_step(64)  # CUDA context up, kernels loaded
    base = 100  # each setting gets shapes of its own: cuDNN's plan cache outlives the setting
    for setting in ("cudnn", "no-cudnn", "cudnn-benchmark", "cudnn-channels-last"):
        torch.backends.cudnn.enabled = setting != "no-cudnn"
        torch.backends.cudnn.benchmark = setting == "cudnn-benchmark"
        if setting == "cudnn-channels-last":
            cnn = cnn.to(memory_format=torch.channels_last)
        probe(f"MobileNetV3 trunk fwd+bwd, {setting}", cnn_step, [base + 7 * k for k in range(6)])
        base += 50
    torch.backends.cudnn.benchmark = False
    model = CrossModalTransformer(PRESETS["paper"]).to(dev).train()

    def model_step(t_audio: int, cudnn: bool = True) -> None:
        torch.backends.cudnn.enabled = cudnn
        b, tv = 16, max(1, t_audio // 33)
        audio = torch.randn(b, t_audio, 240, device=dev)
        faces = torch.rand(b, tv, 3, 128, 128, device=dev)
        lengths, face_lengths = torch.full((b,), t_audio, device=dev), torch.full((b,), tv, device=dev)
        model(audio, lengths, faces, face_lengths).mean().backward()

    model_step(300)
    probe("whole model A+V fwd+bwd (batch 16), cudnn", model_step, [310 + 33 * k for k in range(5)])
    without = [910 + 33 * k for k in range(5)]
    probe("whole model A+V fwd+bwd (batch 16), no cudnn", lambda t: model_step(t, False), without)


if __name__ == "__main__":
    main()
