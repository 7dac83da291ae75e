import dataclasses
import json

import numpy as np
import pytest
import torch

from avemo.config import TrainConfig, model_config_for_regime
from avemo.contract import BEST_CHECKPOINT, CURVES_FILE, HISTORY_FILE, LAST_CHECKPOINT
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit
from avemo.train.data import make_loader
from avemo.train.model import CrossModalTransformer
from avemo.train.trainer import StepLoss, cmvn_stats, loss_sum, train, training_modalities


def test_a_few_steps_lower_the_loss(tiny_cache, micro_config):
    torch.manual_seed(0)
    split = CacheSplit(tiny_cache, "train", micro_config.features)
    model = CrossModalTransformer(micro_config)
    with torch.no_grad():
        model.set_cmvn(*cmvn_stats(split))
    batch = next(iter(make_loader(split, 8)))
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = StepLoss(model)(batch, {"av": 1 / float(batch.usable("av").sum())})  # mean over clips
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_loss_skips_clips_without_the_modality(tiny_cache, micro_config):
    split = CacheSplit(tiny_cache, "train", micro_config.features)
    batch = next(iter(make_loader(split, 4)))
    batch.face_lengths[:] = 0
    model = CrossModalTransformer(micro_config)
    assert loss_sum(model, batch, "v").item() == 0.0  # no clip has a face
    assert loss_sum(model, batch, "a").item() > 0


@pytest.mark.parametrize(
    ("regime", "expected"),
    [("audio", ("a",)), ("visual", ("v",)), ("conventional", ("av",)), ("colearn", ("av", "a", "v"))],
)
def test_regime_modalities(regime, expected):
    assert training_modalities(TrainConfig(regime=regime)) == expected


def _train(cache, out, cfg, regime="colearn", epochs=2, **kw):
    tcfg = TrainConfig(regime=regime, batch_size=8, lr=2e-3, max_epochs=epochs, patience=5, seed=0, **kw)
    return train(cache, out, model_config_for_regime(cfg, regime), tcfg, progress=False)


def test_train_writes_checkpoints_history_and_curves(tiny_cache, micro_config, tmp_path):
    state = _train(tiny_cache, tmp_path, micro_config, epochs=2)
    for name in (BEST_CHECKPOINT, LAST_CHECKPOINT, HISTORY_FILE, CURVES_FILE):
        assert (tmp_path / name).exists(), name
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]["valid_mF1"]) == {"av", "a", "v"}
    assert state["epoch"] == 2 and history[0]["clips_per_second"] > 0


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_cache, micro_config, tmp_path):
    once = _train(tiny_cache, tmp_path / "once", micro_config, epochs=2)
    _train(tiny_cache, tmp_path / "twice", micro_config, epochs=1)  # "interrupted" after epoch 1
    twice = _train(tiny_cache, tmp_path / "twice", micro_config, epochs=2)  # the same command resumes
    assert [h["epoch"] for h in twice["history"]] == [1, 2]
    for a, b in zip(once["history"], twice["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    w1 = torch.load(tmp_path / "once" / LAST_CHECKPOINT, weights_only=True)["model"]
    w2 = torch.load(tmp_path / "twice" / LAST_CHECKPOINT, weights_only=True)["model"]
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-4, atol=1e-5)


def test_resuming_a_run_saved_before_length_buckets_says_its_batches_change(tiny_cache, micro_config, tmp_path, capsys):
    _train(tiny_cache, tmp_path, micro_config, regime="audio", epochs=1)
    payload = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=False)
    del payload["train_config"]["length_buckets"]  # as an avemo before buckets saved it
    torch.save(payload, tmp_path / LAST_CHECKPOINT)
    capsys.readouterr()
    _train(tiny_cache, tmp_path, micro_config, regime="audio", epochs=2)
    assert "a run saved before length buckets" in capsys.readouterr().out


def test_resume_with_other_settings_is_refused(tiny_cache, micro_config, tmp_path):
    _train(tiny_cache, tmp_path, micro_config, regime="audio", epochs=1)
    with pytest.raises(AvemoError, match="other settings"):
        _train(tiny_cache, tmp_path, micro_config, regime="visual", epochs=1)


def test_summed_colearn_mode_trains(tiny_cache, micro_config, tmp_path):
    state = _train(tiny_cache, tmp_path, micro_config, epochs=1, colearn_mode="summed")
    assert np.isfinite(state["history"][0]["train_loss"])


def test_init_weights_are_loaded_and_bad_ones_refused(tiny_cache, micro_config, tmp_path):
    donor = CrossModalTransformer(micro_config)
    torch.save(donor.audio.state_dict(), tmp_path / "audio.pt")
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "bad.pt")
    from avemo.train.trainer import load_init

    target = CrossModalTransformer(micro_config)
    load_init(target.audio, tmp_path / "audio.pt", "audio")
    assert torch.equal(target.audio.convs[0].weight, donor.audio.convs[0].weight)
    with pytest.raises(AvemoError, match="no tensor matches"):
        load_init(target.audio, tmp_path / "bad.pt", "audio")
    no_visual = CrossModalTransformer(dataclasses.replace(micro_config, use_visual=False, cross_layers=0))
    with pytest.raises(AvemoError, match="no visual encoder"):
        load_init(no_visual.visual, tmp_path / "audio.pt", "visual")


def test_colearn_draw_is_uniform_independent_and_seeded():
    """The random co-learning mode draws A+V, A or V per mini-batch with equal probability (Eq. 20)."""
    import itertools

    from avemo.train.trainer import colearn_draws

    modalities = ("av", "a", "v")
    steps = list(itertools.islice(colearn_draws(3, 1, modalities), 3000))
    counts = {m: steps.count(m) for m in modalities}
    assert all(900 <= c <= 1100 for c in counts.values()), counts  # 1000 each, sd ~26
    pairs = {(a, b): 0 for a in modalities for b in modalities}
    for a, b in itertools.pairwise(steps):
        pairs[a, b] += 1
    assert all(250 <= c <= 420 for c in pairs.values()), pairs  # no memory between batches (~333 each)
    assert list(itertools.islice(colearn_draws(3, 1, modalities), 50)) == steps[:50]  # every rank alike
    assert list(itertools.islice(colearn_draws(3, 2, modalities), 50)) != steps[:50]  # a new order each epoch
