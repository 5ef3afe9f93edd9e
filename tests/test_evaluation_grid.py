"""The comparison picture: one input row, a shared error scale, the crop where errors are
largest, the x-t slice through it; images without the slice."""

import pytest
import torch

from cvvae.evaluation import Crop, grid_figure, worst_crop


def clip_and_methods() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A (3, 9, 64, 96) clip; "good" off by 0.02 everywhere, "flicker" also off by 0.5 in a
    20x20 square at (30, 50) on odd frames."""
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 9, 64, 96, generator=g) * 1.6 - 0.8
    good = clip + 0.02
    flicker = good.clone()
    flicker[:, 1::2, 30:50, 50:70] += 0.5
    return clip, {"good": good, "flicker": flicker}


def images_of(fig):
    return [image for ax in fig.axes for image in ax.get_images()]


def test_worst_crop_finds_the_largest_error():
    clip, methods = clip_and_methods()
    crop = worst_crop(clip, methods)
    assert crop.size == 16  # a quarter of 64, the shorter side
    assert 30 <= crop.top <= 34 and 50 <= crop.left <= 54  # inside the 20x20 square
    assert crop.row == crop.top + 8


def test_grid_shows_input_once_and_errors_on_one_scale():
    clip, methods = clip_and_methods()
    fig = grid_figure(clip, methods, "toy", frames=[0, 1, 8])
    # 3 rows (input + 2 methods) x (3 frames + crop + x-t slice), plus the colour bar
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 15
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.startswith("input") for t in titles) == 3
    errors = [im for im in images_of(fig) if im.get_cmap().name == "magma"]
    assert len(errors) == 6 and len({im.get_clim() for im in errors}) == 1
    vmin, vmax = errors[0].get_clim()
    assert vmin == 0 and 0.02 < vmax <= 0.52 + 1e-6  # from the data, not a fixed absolute range
    slices = [im for im in images_of(fig) if im.get_array().shape[:2] == (9, 96)]
    assert len(slices) == 3  # input, good, flicker: one row over all 9 frames
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert any(label.startswith("flicker\n") and label.endswith("dB") for label in labels)


def test_grid_of_an_image_has_no_time_slice_and_given_crop_is_used():
    clip, methods = clip_and_methods()
    fig = grid_figure(clip[:, 0], {n: r[:, 0] for n, r in methods.items()}, "image")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 6  # 3 rows x (1 frame + crop)
    fig = grid_figure(clip, methods, "toy", frames=[4], crop=Crop(0, 0, 12, 5))
    crops = [im for im in images_of(fig) if im.get_array().shape[:2] == (12, 12)]
    assert len(crops) == 3


def test_grid_rejects_frames_outside_the_clip():
    clip, methods = clip_and_methods()
    with pytest.raises(ValueError, match="frames must lie in"):
        grid_figure(clip, methods, "toy", frames=[9])
