import numpy as np
import pytest

from avemo.runtime.media.audio import add_deltas


def _kaldi_deltas_reference(x, window=2):
    """Kaldi's add-deltas written out loop by loop: delta of the clamped input, twice."""
    t_len = len(x)
    denom = 2 * sum(n * n for n in range(1, window + 1))

    def delta(feats):
        out = np.zeros_like(feats)
        for t in range(t_len):
            for n in range(1, window + 1):
                out[t] += n * (feats[min(t + n, t_len - 1)] - feats[max(t - n, 0)])
        return out / denom

    # Order 2 in Kaldi convolves the order-1 filter with itself and applies it to the clamped
    # *input*; away from the edges that equals delta(delta(x)).
    return delta(x), delta(delta(x))


def test_add_deltas_matches_the_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    out = add_deltas(x, window=2)
    d1, d2 = _kaldi_deltas_reference(x)
    assert out.shape == (40, 15)
    np.testing.assert_allclose(out[:, :5], x, atol=1e-6)
    np.testing.assert_allclose(out[:, 5:10], d1, atol=1e-5)
    np.testing.assert_allclose(out[4:-4, 10:], d2[4:-4], atol=1e-5)  # edges differ by definition


def test_add_deltas_of_a_ramp():
    x = np.arange(20, dtype=float)[:, None]
    out = add_deltas(x)
    np.testing.assert_allclose(out[4:-4, 1], 1.0, atol=1e-6)  # slope 1
    np.testing.assert_allclose(out[4:-4, 2], 0.0, atol=1e-6)


def test_add_deltas_rejects_wrong_rank():
    with pytest.raises(ValueError, match="frames, dims"):
        add_deltas(np.zeros(10))


def test_online_fbank_in_pieces_equals_one_call_and_keeps_nothing():
    from avemo.config import FeatureConfig
    from avemo.runtime.media.audio import OnlineFbank, fbank, frame_count

    cfg = FeatureConfig()
    x = (np.random.default_rng(0).random(40000).astype(np.float32) - 0.5) * 0.2
    online = OnlineFbank(cfg)
    parts = []
    for piece in np.array_split(x, 7):  # uneven pieces, as a demuxer delivers them
        online.accept(piece)
        parts.append(online.frames())
    online.finish()
    parts.append(online.frames())
    whole = fbank(x, cfg)
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5)
    assert len(whole) == frame_count(len(x), cfg) == 250
    with pytest.raises(Exception, match="already removed"):  # handed-out frames are not kept inside
        online._computer.get_frame(0)
