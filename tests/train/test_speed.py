"""Mixed precision and the loop options (issue #28): autocast bf16 / fp16 (scaled) steps train, the CUDA
choice follows the GPU's bf16 support (injected: no GPU here), and the default CPU path is plain fp32."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from avemo.config import TrainConfig, model_config_for_regime
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit
from avemo.train.data import make_loader
from avemo.train.distributed import Dist
from avemo.train.model import CrossModalTransformer
from avemo.train.speed import LoopOptions, Precision, resolve_precision
from avemo.train.trainer import Executor, StepLoss, train

CUDA = torch.device("cuda", 0)  # only named: resolve_precision never touches the device


@pytest.mark.parametrize(
    ("choice", "device", "bf16", "want"),
    [
        ("auto", torch.device("cpu"), True, None),  # CPU training unchanged by default
        ("auto", CUDA, True, torch.bfloat16),
        ("auto", CUDA, False, torch.float16),
        ("fp32", CUDA, True, None),
        ("fp16", CUDA, True, torch.float16),
        ("bf16", torch.device("cpu"), False, torch.bfloat16),  # CPU autocast has bf16 whatever the GPU
    ],
)
def test_precision_follows_the_device_and_its_bf16_support(choice, device, bf16, want):
    precision = resolve_precision(choice, device, bf16_supported=lambda: bf16)
    assert (precision.device_type, precision.dtype) == (device.type, want)


def test_precision_refuses_bf16_on_a_gpu_without_it_and_unknown_names():
    with pytest.raises(AvemoError, match="no bf16"):
        resolve_precision("bf16", CUDA, bf16_supported=lambda: False)
    with pytest.raises(AvemoError, match="unknown --precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_only_fp16_scales_its_loss():
    assert Precision("cpu", torch.float16).scaler().is_enabled()
    assert not Precision("cpu", torch.bfloat16).scaler().is_enabled()
    assert not Precision("cpu").scaler().is_enabled()


def _executor(model, precision: Precision | None = None) -> Executor:
    optimizer = torch.optim.RAdam(model.parameters(), lr=3e-3)
    args = (model, optimizer, StepLoss(model), TrainConfig(regime="conventional"), Dist())
    return Executor(*args) if precision is None else Executor(*args, precision)


def _batch(cache, cfg):
    return next(iter(make_loader(CacheSplit(cache, "train", cfg.features), 8)))


def test_default_cpu_step_is_the_plain_fp32_step(tiny_cache, micro_config):
    torch.manual_seed(0)
    cfg = model_config_for_regime(micro_config, "conventional")
    model = CrossModalTransformer(cfg)
    plain = copy.deepcopy(model)
    batch = _batch(tiny_cache, cfg)
    weights = {"av": 1 / float(batch.usable("av").sum())}
    loss = _executor(model).step(batch, ("av",))
    opt = torch.optim.RAdam(plain.parameters(), lr=3e-3)
    want = StepLoss(plain)(batch, weights)
    want.backward()
    torch.nn.utils.clip_grad_norm_(plain.parameters(), TrainConfig().grad_clip)
    opt.step()
    assert loss == want.item()
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # bit for bit: no autocast, no scaler in the way


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_autocast_step_on_cpu_trains_with_a_finite_loss(tiny_cache, micro_config, dtype):
    torch.manual_seed(0)
    cfg = model_config_for_regime(micro_config, "conventional")
    model = CrossModalTransformer(cfg)
    reference = copy.deepcopy(model)
    batch = _batch(tiny_cache, cfg)
    ex = _executor(model, Precision("cpu", dtype))
    seen = []
    model.visual.cnn[0][0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = [ex.step(batch, ("av",)) for _ in range(3)]
    fp32 = _executor(reference).step(batch, ("av",))
    assert seen[0] == dtype  # the convolutions ran in the autocast dtype
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert losses[0] == pytest.approx(fp32, rel=0.05) and losses[0] != fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert ex.scaler.is_enabled() == (dtype == torch.float16)


def test_train_runs_and_resumes_under_bf16_with_a_channels_last_cnn(tiny_cache, micro_config, tmp_path, capsys):
    cfg = model_config_for_regime(micro_config, "conventional")
    loop = LoopOptions(precision="bf16", channels_last=True)
    tcfg = TrainConfig(regime="conventional", batch_size=8, lr=2e-3, max_epochs=1, patience=5)
    train(tiny_cache, tmp_path, cfg, tcfg, loop=loop, progress=False)
    state = train(tiny_cache, tmp_path, cfg, dataclasses.replace(tcfg, max_epochs=2), loop=loop, progress=False)
    out = capsys.readouterr().out
    assert "; bf16" in out and "resuming" in out
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in state["history"])
