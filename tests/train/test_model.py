import numpy as np
import pytest
import torch

from avemo.config import PRESETS, REGIMES, model_config_for_regime
from avemo.contract import NUM_LABELS
from avemo.train.model import CrossModalTransformer

TINY = PRESETS["tiny"]


def _inputs(batch=3, ta=101, tv=7, size=TINY.features.face_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, ta, TINY.features.audio_dim, generator=g)
    faces = torch.rand(batch, tv, 3, size, size, generator=g)
    # Lengths shorter than the padded size, and values left beyond them (as reused buffers leave them).
    audio_lengths = torch.tensor([ta, ta // 2 + 1, 3][:batch])
    face_lengths = torch.tensor([tv, tv // 2, 1][:batch])
    return audio, audio_lengths, faces, face_lengths


def _kwargs(modality, audio, al, faces, fl):
    kw = {}
    if "a" in modality:
        kw.update(audio=audio, audio_lengths=al)
    if "v" in modality:
        kw.update(faces=faces, face_lengths=fl)
    return kw


@pytest.mark.parametrize("modality", ["a", "v", "av"])
def test_padded_batch_equals_each_clip_alone(modality):
    torch.manual_seed(0)
    model = CrossModalTransformer(TINY).eval()
    audio, al, faces, fl = _inputs()
    with torch.no_grad():
        batched = torch.sigmoid(model(**_kwargs(modality, audio, al, faces, fl)))
        for i in range(len(al)):
            alone = torch.sigmoid(
                model(
                    **_kwargs(
                        modality, audio[i : i + 1, : al[i]], al[i : i + 1], faces[i : i + 1, : fl[i]], fl[i : i + 1]
                    )
                )
            )
            assert torch.allclose(alone[0], batched[i], atol=1e-5), (modality, i, (alone[0] - batched[i]).abs().max())


def test_padding_invariance_would_fail_without_masks():
    """The invariance test can fail: changing a valid frame does change the output."""
    model = CrossModalTransformer(TINY).eval()
    audio, al, _faces, _fl = _inputs()
    with torch.no_grad():
        before = model(audio=audio, audio_lengths=al)
        audio2 = audio.clone()
        audio2[1, 0] += 5.0
        after = model(audio=audio2, audio_lengths=al)
    assert (before[1] - after[1]).abs().max() > 1e-4
    assert torch.allclose(before[0], after[0])


@pytest.mark.parametrize("regime", REGIMES)
def test_output_shapes_for_every_regime_and_modality(regime):
    cfg = model_config_for_regime(TINY, regime)
    model = CrossModalTransformer(cfg).eval()
    audio, al, faces, fl = _inputs(batch=2)
    for modality in cfg.modalities:
        out = model(**_kwargs(modality, audio, al, faces, fl))
        assert out.shape == (2, NUM_LABELS)
        assert torch.isfinite(out).all()
    assert (cfg.cross_layers == 0) == (regime in ("audio", "visual"))
    if regime == "audio":
        with pytest.raises(ValueError, match="no visual encoder"):
            model(faces=faces, face_lengths=fl)


def test_paper_preset_sizes():
    cfg = PRESETS["paper"]
    model = CrossModalTransformer(cfg)
    assert (cfg.d_model, cfg.ffn_dim, cfg.num_heads) == (128, 512, 4)
    assert (len(model.audio.encoder.blocks), len(model.visual.encoder.blocks), len(model.cross.blocks)) == (6, 2, 2)
    audio = torch.randn(1, 400, 240)
    x, _mask = model.audio(audio, torch.tensor([400]))
    assert x.shape == (1, 100, 128)  # ConvolutionPooling: time / 4


def test_dynamic_onnx_export_runs_at_two_lengths(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = CrossModalTransformer(model_config_for_regime(TINY, "audio")).eval()

    class AudioGraph(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, audio_feats, audio_lengths):
            return torch.sigmoid(self.m(audio=audio_feats, audio_lengths=audio_lengths))

    audio, al, _, _ = _inputs(batch=2, ta=64)
    batch, time = torch.export.Dim("batch", max=64), torch.export.Dim("time", min=8, max=4000)
    path = tmp_path / "a.onnx"
    torch.onnx.export(
        AudioGraph(model).eval(),
        (audio, al),
        str(path),
        input_names=["audio_feats", "audio_lengths"],
        output_names=["probs"],
        dynamic_shapes={"audio_feats": {0: batch, 1: time}, "audio_lengths": {0: batch}},
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((1, 37), (3, 211)):
        a, lengths, _, _ = _inputs(batch=b, ta=t, seed=b)
        got = session.run(None, {"audio_feats": a.numpy(), "audio_lengths": lengths.numpy()})[0]
        with torch.no_grad():
            want = torch.sigmoid(model(audio=a, audio_lengths=lengths)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


# torchvision's model docs give MobileNetV3 with its ImageNet classifier (576|960 -> 1024|1280 -> 1000):
# small 2,542,856 and large 5,483,032 parameters. The trunk here must account for the rest exactly.
@pytest.mark.parametrize(
    ("name", "total", "channels", "hidden"),
    [("mobilenet_v3_small", 2_542_856, 576, 1024), ("mobilenet_v3_large", 5_483_032, 960, 1280)],
)
def test_mobilenet_trunk_matches_torchvision_sizes(name: str, total: int, channels: int, hidden: int) -> None:
    from avemo.train.mobilenet import mobilenet_v3_features

    trunk = mobilenet_v3_features(name).eval()
    classifier = channels * hidden + hidden + hidden * 1000 + 1000
    assert sum(p.numel() for p in trunk.parameters()) == total - classifier
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 128, 128)).shape == (1, channels, 4, 4)  # stride 32


def test_mobilenet_width_rounding_and_residuals() -> None:
    from avemo.train.mobilenet import make_divisible, mobilenet_v3_features

    assert [make_divisible(v) for v in (4, 12, 18, 22, 144 * 0.25)] == [8, 16, 24, 24, 40]  # 8 | v, never < 90 %
    trunk = mobilenet_v3_features("mobilenet_v3_small")
    residual = [m.use_residual for m in trunk[1:-1]]
    # stride-2 blocks and channel changes (16->24, 24->40, 40->48, 48->96) have no shortcut
    assert residual == [False, False, True, False, True, True, False, True, False, True, True]
    assert all(m.momentum == 0.1 and m.eps == 0.001 for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="mobilenet_v3_tiny"):
        mobilenet_v3_features("mobilenet_v3_tiny")
