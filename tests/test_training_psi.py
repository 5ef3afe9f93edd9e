"""psi: the frame -> latent-time mapping of the latent regularization (SPEC: first frame kept,
then one value per group of 4 frames 1+4j..4+4j)."""

import pytest
import torch

from cvvae.errors import UserInputError
from cvvae.training.latent_reg import psi, psi_indices


def test_first_takes_first_frame_of_each_group():
    assert psi_indices(9, "first").tolist() == [0, 1, 5]
    assert psi_indices(17, "first").tolist() == [0, 1, 5, 9, 13]


def test_slice_takes_a_fixed_frame_default_last_like_released_code():
    assert psi_indices(9, "slice").tolist() == [0, 4, 8]
    assert psi_indices(13, "slice").tolist() == list(range(13))[::4]
    assert psi_indices(9, "slice", slice_offset=1).tolist() == [0, 2, 6]


def test_random_picks_one_frame_inside_each_group_and_covers_all_offsets():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        idx = psi_indices(17, "random", generator=g).tolist()
        assert idx[0] == 0 and len(idx) == 5
        for j, i in enumerate(idx[1:]):
            assert 1 + 4 * j <= i <= 4 + 4 * j
            seen.add(i - 1 - 4 * j)
    assert seen == {0, 1, 2, 3}


def test_random_is_reproducible_with_a_seeded_generator():
    a = psi_indices(33, "random", generator=torch.Generator().manual_seed(3))
    b = psi_indices(33, "random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["first", "slice", "mean", "blend", "random"])
def test_single_frame_maps_to_itself(mode):
    x = torch.randn(2, 3, 1, 4, 4)
    assert torch.equal(psi(x, mode, generator=torch.Generator().manual_seed(0)), x)


def test_mean_averages_each_group_and_keeps_first():
    t = torch.arange(9, dtype=torch.float32).view(1, 1, 9, 1, 1).expand(2, 3, 9, 2, 2)
    out = psi(t, "mean")
    assert out.shape == (2, 3, 3, 2, 2)
    assert out[0, 0, :, 0, 0].tolist() == [0.0, 2.5, 6.5]


def test_blend_weights_the_slice_frame_against_the_group_mean_and_keeps_first():
    t = torch.arange(9, dtype=torch.float32).view(1, 1, 9, 1, 1).expand(2, 3, 9, 2, 2)
    out = psi(t, "blend", slice_offset=3, slice_share=0.75)
    assert out.shape == (2, 3, 3, 2, 2)
    # groups 1..4 and 5..8: slice frames 4 and 8, means 2.5 and 6.5
    assert out[1, 2, :, 1, 0].tolist() == [0.0, 0.75 * 4 + 0.25 * 2.5, 0.75 * 8 + 0.25 * 6.5]
    x = torch.randn(1, 3, 9, 4, 4)
    assert torch.equal(psi(x, "blend", slice_share=1.0), psi(x, "slice"))
    assert torch.equal(psi(x, "blend", slice_share=0.0), psi(x, "mean"))


def test_gathers_the_indexed_frames():
    x = torch.randn(1, 3, 9, 4, 4)
    assert torch.equal(psi(x, "slice"), x[:, :, [0, 4, 8]])


@pytest.mark.parametrize("frames", [0, 2, 8])
def test_rejects_frame_counts_not_1_plus_4k(frames):
    with pytest.raises(UserInputError):
        psi_indices(frames, "first")
    with pytest.raises(UserInputError):
        psi(torch.zeros(1, 3, max(frames, 1) + (frames == 0), 2, 2), "mean")
