"""Length buckets (issue #28): every batch is padded to one of a few lengths, so a GPU meets few input shapes,
and the padding moves nothing: not the output, not the gradients, not BatchNorm's running statistics."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from avemo.config import PRESETS, TrainConfig
from avemo.train.cache import CacheSplit
from avemo.train.data import BucketBatchSampler, LengthBuckets, clip_lengths, make_loader
from avemo.train.mobilenet import MaskedBatchNorm2d
from avemo.train.model import CrossModalTransformer
from avemo.train.trainer import _same_run

TINY = PRESETS["tiny"]


def _lengths(n: int = 203, seed: int = 0) -> np.ndarray:
    """Audio frames ~100 per second and faces 3 per second of 0.5-20 s clips; some clips have no face."""
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(0.5, 20.0, n)
    faces = np.where(rng.random(n) < 0.1, 0, np.ceil(3 * seconds))
    return np.stack([np.round(100 * seconds), faces], axis=1).astype(np.int64)


def test_every_batch_is_padded_to_a_bucket_length(tiny_cache):
    split = CacheSplit(tiny_cache, "train", TINY.features)
    loader = make_loader(split, 4, shuffle=True, buckets=3)
    edges = {tuple(int(v) for v in e) for e in loader.batch_sampler.buckets.edges}
    shapes, sizes = set(), []
    for batch in loader:
        padded = (batch.audio.shape[1], batch.faces.shape[1])
        assert padded in edges, (padded, edges)
        shapes.add((len(batch.labels), *padded))
        sizes.append(len(batch.labels))
    assert len(edges) == 3 and len(shapes) <= len(edges) + 1  # the +1: the epoch's one short batch
    assert sizes.count(4) >= len(sizes) - 1
    unbucketed = {tuple(b.audio.shape[:2]) for b in make_loader(split, 4, shuffle=True, pad_to_bucket=False)}
    assert len(unbucketed) > len(shapes)  # the test can fail: padding to each batch's longest clip varies


def test_buckets_fit_each_clip_in_the_smallest_bucket_and_refuse_longer_ones():
    lengths = _lengths()
    buckets = LengthBuckets(lengths, 8)
    assert len(buckets) == 8 and (np.diff(buckets.edges, axis=0) >= 0).all()
    assert tuple(buckets.edges[-1]) == tuple(lengths.max(axis=0))
    of = buckets.of(lengths)
    assert (lengths <= buckets.edges[of]).all()
    assert not (lengths[of > 0] <= buckets.edges[of[of > 0] - 1]).all(axis=1).any()  # none fits a smaller one
    assert buckets.pad_to(0, 0) == (max(1, int(buckets.edges[0, 0])), max(1, int(buckets.edges[0, 1])))
    with pytest.raises(ValueError, match="longer than every"):
        buckets.pad_to(int(lengths[:, 0].max()) + 1, 0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_covers_every_clip_once_per_epoch_and_is_seeded(shuffle):
    lengths = _lengths()
    buckets = LengthBuckets(lengths, 8)

    def epoch(seed: int, number: int) -> list[list[int]]:
        sampler = BucketBatchSampler(lengths, 16, seed, shuffle, buckets=buckets)
        sampler.epoch = number
        return list(sampler)

    for number in (1, 2):
        batches = epoch(5, number)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert sorted(len(b) for b in batches)[1:] == [16] * (len(batches) - 1)  # one short batch at most
        for b in batches:  # a bucket's leftover joins a longer bucket: nothing is padded past its batch's bucket
            assert (lengths[b] <= buckets.edges[buckets.of(lengths[b]).max()]).all()
        assert epoch(5, number) == batches
    if shuffle:
        assert epoch(5, 1) != epoch(5, 2) and epoch(5, 1) != epoch(6, 1)


def _step(model: CrossModalTransformer, pad: int, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training-mode logits and gradients of three clips padded by ``pad`` frames of random values."""
    g = torch.Generator().manual_seed(seed)
    faces = torch.cat([torch.rand(3, 5, 3, 48, 48, generator=g), torch.rand(3, pad, 3, 48, 48)], dim=1)
    audio = torch.cat([torch.randn(3, 40, 240, generator=g), torch.randn(3, 8 * pad, 240)], dim=1)
    lengths = {"audio_lengths": torch.tensor([40, 21, 7]), "face_lengths": torch.tensor([5, 2, 1])}
    logits = model(audio=audio, faces=faces, **lengths)
    model.zero_grad()
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _running(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_padding_moves_neither_output_gradients_nor_batchnorm_statistics():
    torch.manual_seed(0)
    base = CrossModalTransformer(dataclasses.replace(TINY, dropout=0.0)).train()
    short, padded = copy.deepcopy(base), copy.deepcopy(base)
    seen = []
    padded.visual.cnn.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    out_short, grads_short = _step(short, pad=0)
    out_padded, grads_padded = _step(padded, pad=4)
    assert seen == [3 * (5 + 4)]  # the CNN's input is the padded batch (its shape repeats), not the real frames
    torch.testing.assert_close(out_padded, out_short, rtol=1e-5, atol=1e-5)
    for name, grad in grads_short.items():
        torch.testing.assert_close(grads_padded[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    before, after_short, after_padded = _running(base), _running(short), _running(padded)
    assert any(not torch.equal(before[k], after_short[k]) for k in before)  # the step did move them
    for key in after_short:
        torch.testing.assert_close(after_padded[key], after_short[key], rtol=1e-5, atol=1e-6, msg=key)


def test_masked_batchnorm_is_batchnorm_over_the_real_frames_only():
    torch.manual_seed(0)
    x = torch.randn(7, 4, 3, 3) * 3 + 1
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    masked, plain = MaskedBatchNorm2d(4, eps=0.001), torch.nn.BatchNorm2d(4, eps=0.001)
    for bn in (masked, plain):
        torch.nn.init.uniform_(bn.weight)
        torch.nn.init.uniform_(bn.bias)
    plain.load_state_dict(masked.state_dict())
    xm, xp = x.clone().requires_grad_(), x[mask].clone().requires_grad_()
    ym, yp = masked(xm, mask), plain(xp)
    torch.testing.assert_close(ym[mask], yp, rtol=1e-5, atol=1e-5)
    (ym[mask] * torch.arange(yp.numel()).view_as(yp)).sum().backward()
    (yp * torch.arange(yp.numel()).view_as(yp)).sum().backward()
    torch.testing.assert_close(xm.grad[mask], xp.grad, rtol=1e-4, atol=1e-5)
    assert xm.grad[~mask].abs().max() == 0  # padded frames receive no gradient
    for a, b in ((masked.weight.grad, plain.weight.grad), (masked.bias.grad, plain.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(masked.state_dict()[key], plain.state_dict()[key], rtol=1e-5, atol=1e-6)
    unmasked = torch.nn.BatchNorm2d(4, eps=0.001)
    unmasked(x)  # the test can fail: statistics over every frame, padding included, are other ones
    assert not torch.allclose(unmasked.running_mean, plain.running_mean, atol=1e-3)


def test_masked_batchnorm_without_real_frames_leaves_statistics_alone():
    bn = MaskedBatchNorm2d(4)
    y = bn(torch.randn(3, 4, 2, 2), torch.zeros(3, dtype=torch.bool))
    assert torch.isfinite(y).all()
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))


def test_loader_lengths_leave_out_an_unused_input(tiny_cache):
    split = CacheSplit(tiny_cache, "train", TINY.features)
    both, audio_only = clip_lengths(split), clip_lengths(split, need_faces=False)
    assert (both[:, 1] > 0).any() and (audio_only[:, 1] == 0).all()
    assert np.array_equal(both[:, 0], audio_only[:, 0])


def test_a_run_saved_before_length_buckets_existed_still_resumes():
    from avemo.config import to_dict

    cfg = TrainConfig()
    saved = to_dict(cfg)
    del saved["length_buckets"]
    payload = {"model_config": to_dict(TINY), "train_config": saved}
    assert _same_run(payload, TINY, cfg)
    assert not _same_run(payload, TINY, dataclasses.replace(cfg, length_buckets=4))
