import numpy as np
import pytest

from bnnprune.engine import EngineError, pack_signs, unpack_signs
from bnnprune.engine.pack import pack_weights, tail_mask, words


@pytest.mark.parametrize("channels", [1, 37, 63, 64, 65, 130])
def test_pack_unpack_round_trip(channels, rng):
    x = rng.standard_normal((3, 5, channels)).astype(np.float32)
    x[0, 0, 0] = 0.0  # sign(0) = +1
    packed = pack_signs(x)
    assert packed.shape == (3, 5, words(channels)) and packed.dtype == np.uint64
    assert np.array_equal(unpack_signs(packed, channels), np.where(x >= 0, 1.0, -1.0))
    # unused high bits of the last word stay zero
    assert not np.any(packed & ~tail_mask(channels))


def test_bit_order_is_channel_order():
    x = np.ones((1, 70), np.float32)
    x[0, 0] = x[0, 3] = x[0, 64] = -1.0
    packed = pack_signs(x)
    assert packed[0, 0] == np.uint64(0b1001) and packed[0, 1] == np.uint64(1)


def test_nan_packs_as_minus_one():
    assert unpack_signs(pack_signs(np.array([np.nan, -0.0], np.float32)), 2).tolist() == [-1, 1]


def test_pack_weights_layout(rng):
    w = rng.standard_normal((4, 65, 3, 2)).astype(np.float32)
    packed = pack_weights(w)
    assert packed.shape == (4, 3, 2 * words(65))
    back = unpack_signs(packed.reshape(4, 3, 2, words(65)), 65)
    assert np.array_equal(back, np.where(w >= 0, 1.0, -1.0).transpose(0, 2, 3, 1))


def test_unpack_rejects_wrong_word_count():
    with pytest.raises(EngineError):
        unpack_signs(np.zeros((2, 1), np.uint64), 65)
