"""Uniform frame sampling and the protocol's frame selection, on index patterns."""

import pytest
import torch

from cvvae.errors import UserInputError
from cvvae.evaluation import Protocol, fill_frames, keyframe_indices
from cvvae.evaluation.grid import default_grid_frames


def ramp(num_frames: int) -> torch.Tensor:
    """A (1, T, 2, 2) clip whose frame t holds the value t everywhere."""
    return torch.arange(num_frames, dtype=torch.float64).view(1, -1, 1, 1).expand(1, -1, 2, 2)


def test_keyframes_are_every_fourth_frame_from_zero():
    assert keyframe_indices(17).tolist() == [0, 4, 8, 12, 16]
    assert keyframe_indices(5).tolist() == [0, 4]
    assert keyframe_indices(1).tolist() == [0]
    for bad in (0, 2, 8, 16):
        with pytest.raises(ValueError, match="1 \\+ 4k"):
            keyframe_indices(bad)


def test_linear_fill_is_exact_on_a_ramp():
    clip = ramp(17)
    keys = clip[:, keyframe_indices(17)]
    torch.testing.assert_close(fill_frames(keys, "linear"), clip, rtol=0, atol=0)


def test_repeat_fill_holds_the_previous_keyframe():
    keys = ramp(17)[:, keyframe_indices(17)]
    filled = fill_frames(keys, "repeat")[0, :, 0, 0].tolist()
    assert filled == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 16]


def test_linear_fill_weights_between_two_keyframes():
    keys = torch.tensor([0.0, 8.0]).view(1, 2, 1, 1)
    assert fill_frames(keys, "linear")[0, :, 0, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_single_keyframe_and_bad_mode():
    keys = torch.ones(3, 1, 4, 4)
    assert fill_frames(keys, "linear").shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="fill mode"):
        fill_frames(keys, "nearest")


def test_protocol_source_frames_are_consecutive_strided_segments():
    p = Protocol(frames=5, height=32, width=32, stride=2, start=3, segments=2)
    assert p.source_frames(0) == [3, 5, 7, 9, 11]
    assert p.source_frames(1) == [13, 15, 17, 19, 21]
    assert p.keyframes == [0, 4]
    record = p.to_dict()
    assert record["uniform_sampling_keyframes"] == [0, 4] and record["posterior"] == "mean"
    assert "3 + 2 * (s * 5 + i)" in record["frame_selection"]


@pytest.mark.parametrize(
    "kwargs",
    [dict(frames=16), dict(height=30), dict(width=8), dict(stride=0), dict(segments=0)],
)
def test_protocol_rejects_bad_settings(kwargs):
    with pytest.raises(UserInputError):
        Protocol(**kwargs)


def test_default_grid_frames_are_first_between_keyframes_and_last():
    assert [default_grid_frames(t) for t in (1, 5, 9, 13, 17, 33)] == [
        [0],
        [0, 2, 4],
        [0, 6, 8],
        [0, 6, 12],
        [0, 10, 16],
        [0, 18, 32],
    ]
