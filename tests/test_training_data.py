"""Training data: sources (folders, CSV, JSONL), random clips, joint batches, sharding,
deterministic plans, and unreadable files skipped and counted."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VIDEOS

from cvvae.errors import UserInputError
from cvvae.io import list_images, list_videos, read_video, write_image, write_video
from cvvae.training.config import DataConfig
from cvvae.training.data import (
    BatchPlan,
    ClipDataset,
    make_loader,
    rotate_hue,
    validation_keys,
)

SOURCE_VIDEOS = sorted(VIDEOS.glob("*.mp4"))


def make_clips(folder: Path, count: int = 3, frames: int = 20, size=(36, 64)) -> list[Path]:
    """Write ``count`` short low-resolution clips cut from the real videos in the shared data
    folder, or, without it, synthetic moving patterns of the same size."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if SOURCE_VIDEOS:
            source = SOURCE_VIDEOS[i % len(SOURCE_VIDEOS)]
            video, _ = read_video(source, start=20 * i, num_frames=frames, stride=2, size=size)
        else:
            video = _synthetic_clip(i, frames, size)
        path = folder / f"clip{i}.mp4"
        write_video(path, video, fps=15)
        paths.append(path)
    return paths


def _synthetic_clip(seed: int, frames: int, size: tuple[int, int]) -> torch.Tensor:
    """Smooth colour waves drifting over time, ``(3, frames, H, W)`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    freq, phase = torch.rand(3, 2, generator=g) * 0.3 + 0.05, torch.rand(3, generator=g) * 6
    t = torch.arange(frames).view(1, -1, 1, 1).float()
    y = torch.arange(size[0]).view(1, 1, -1, 1).float()
    x = torch.arange(size[1]).view(1, 1, 1, -1).float()
    wave = freq[:, 0].view(3, 1, 1, 1) * (y + 2 * t) + freq[:, 1].view(3, 1, 1, 1) * (x - t)
    return torch.sin(wave + phase.view(3, 1, 1, 1)) * 0.8


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("clips"))


def _config(**changes):
    base = dict(
        videos=["unused"],
        video_shapes=[[9, 32]],
        image_size=16,
        frame_stride=[1, 1],
        resize_range=[1.0, 1.0],
        batch_size=2,
        num_workers=0,
        max_read_tries=4,
    )
    base.update(changes)
    return DataConfig(**base)


def test_sources_from_folder_csv_and_jsonl(tmp_path, clips):
    folder = clips[0].parent
    (tmp_path / "list.csv").write_text("path,caption\n" + "".join(f"{p},x\n" for p in clips[:2]))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.jsonl").write_text(json.dumps({"path": "../a.mp4"}) + "\n\n")
    found = list_videos(
        [str(folder), str(tmp_path / "list.csv"), str(tmp_path / "sub" / "list.jsonl")]
    )
    assert found == clips + clips[:2] + [tmp_path / "sub" / ".." / "a.mp4"]


def test_bad_sources_are_user_errors(tmp_path):
    (tmp_path / "l.csv").write_text("file\nx.mp4\n")
    with pytest.raises(UserInputError, match="'path' column"):
        list_videos([str(tmp_path / "l.csv")])
    with pytest.raises(UserInputError, match="folder, .csv or .jsonl"):
        list_videos([str(tmp_path / "nope.txt")])
    with pytest.raises(UserInputError, match="must be a folder"):
        list_images([str(tmp_path / "nope")])


def test_video_clip_shape_range_and_determinism(clips):
    config = _config(frame_stride=[1, 3], resize_range=[1.0, 1.5])
    ds = ClipDataset(clips, [], config)
    plan = BatchPlan(len(clips), 0, config, seed=0)
    key = plan.batch(0)[0]
    a, b = ds[key], ds[key]
    assert a["video"].shape == (3, 9, 32, 32) and a["skipped"] == []
    assert torch.equal(a["video"], b["video"])
    assert -1.0 <= a["video"].min() and a["video"].max() <= 1.0


def test_clip_is_the_frames_at_the_drawn_stride(clips):
    """Resize factor 36/32 keeps the 36 px high source unscaled, so a clip is a crop of it."""
    config = _config(frame_stride=[2, 2], resize_range=[1.125, 1.125])
    ds = ClipDataset(clips, [], config)
    key = BatchPlan(len(clips), 0, config, seed=1).batch(0)[0]
    clip = ds[key]["video"]
    full, _ = read_video(clips[key.index])
    matches = [
        (s, top, left)
        for s in range(full.shape[1] - 16)
        for top in range(5)
        for left in range(33)
        if torch.allclose(
            full[:, s : s + 17 : 2, top : top + 32, left : left + 32], clip, atol=1e-6
        )
    ]
    assert len(matches) >= 1


def test_hue_rotation_turns_chroma_and_keeps_luma_and_greys():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(3, 2, 8, 8, generator=g) * 0.6 - 0.3  # room to turn without clipping
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)
    turned = rotate_hue(video, 2.0)
    assert torch.allclose((turned * luma).sum(0), (video * luma).sum(0), atol=1e-5)
    assert (turned - video).abs().max() > 0.05
    assert torch.allclose(rotate_hue(turned, -2.0), video, atol=1e-5)
    assert torch.allclose(rotate_hue(video, 2 * np.pi), video, atol=1e-5)
    grey = torch.linspace(-1, 1, 5).view(1, 5).expand(3, 5)
    assert torch.allclose(rotate_hue(grey, 1.0), grey, atol=1e-5)
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1)
    assert rotate_hue(red, -2 * np.pi / 3).argmax() == 1  # a third of a turn: red -> green
    assert rotate_hue(red, 2 * np.pi / 3).argmax() == 2  # the other way: red -> blue


def test_hue_rotation_share_of_samples(clips):
    config = _config(hue_rotation=0.5)
    plain, turned = ClipDataset(clips, [], _config()), ClipDataset(clips, [], config)
    keys = [k for b in range(8) for k in BatchPlan(len(clips), 0, config, seed=0).batch(b)]
    changed = [not torch.equal(plain[k]["video"], turned[k]["video"]) for k in keys]
    assert 3 <= sum(changed) <= 13
    assert all(torch.equal(turned[k]["video"], turned[k]["video"]) for k in keys[:2])
    for key in validation_keys(turned, 6, seed=0):  # validation clips keep their colours
        assert torch.equal(turned[key]["video"], plain[key]["video"])


def test_images_are_one_frame_clips(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"im{i}.png", torch.rand(3, 20, 30) * 2 - 1)
    images = list_images([str(tmp_path)])
    config = _config(videos=[], images=[str(tmp_path)], image_ratio=1.0, resize_range=[1.0, 1.3])
    item = ClipDataset([], images, config)[BatchPlan(0, 2, config, seed=0).batch(0)[0]]
    assert item["video"].shape == (3, 1, 16, 16)


def test_joint_batches_follow_the_mix_ratio_and_shapes():
    config = _config(images=["x"], image_ratio=0.3, video_shapes=[[9, 32], [17, 16]])
    plan = BatchPlan(5, 5, config, seed=0)
    kinds = [plan.batch(b)[0] for b in range(2000)]
    image_share = np.mean([k.kind == "image" for k in kinds])
    assert 0.26 < image_share < 0.34
    for key in kinds:
        assert (key.frames, key.size) in {(1, 16), (9, 32), (17, 16)}
        assert (key.kind == "image") == (key.frames == 1)
    assert {(k.frames, k.size) for k in kinds if k.kind == "video"} == {(9, 32), (17, 16)}


def test_plan_is_resumable_and_sharded_across_ranks():
    config = _config()
    full = BatchPlan(10, 0, config, seed=3)
    resumed = iter(BatchPlan(10, 0, config, seed=3, start=7))
    assert next(resumed) == full.batch(7)
    rank0 = [
        k.index
        for b in range(50)
        for k in BatchPlan(10, 0, config, seed=3, rank=0, world=2).batch(b)
    ]
    rank1 = [
        k.index
        for b in range(50)
        for k in BatchPlan(10, 0, config, seed=3, rank=1, world=2).batch(b)
    ]
    assert set(rank0) == {0, 2, 4, 6, 8} and set(rank1) == {1, 3, 5, 7, 9}


def test_corrupt_and_missing_videos_are_skipped_and_counted(tmp_path, clips):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    files = [bad, tmp_path / "missing.mp4", *clips]
    config = _config()
    ds = ClipDataset(files, [], config)
    loader = make_loader(ds, BatchPlan(len(files), 0, config, seed=0), num_workers=1)
    batches = iter(loader)
    skipped = []
    for _ in range(8):
        batch = next(batches)
        assert batch["video"].shape == (2, 3, 9, 32, 32)
        skipped += batch["skipped"]
    assert any("bad.mp4" in s for s in skipped) and any("missing.mp4" in s for s in skipped)


def test_too_short_video_is_skipped(tmp_path, clips):
    short = make_clips(tmp_path, count=1, frames=5)[0]
    config = _config()
    item = ClipDataset([short, clips[0]], [], config)[BatchPlan(1, 0, config, seed=0).batch(0)[0]]
    assert len(item["skipped"]) == 1 and "clip needs 9" in item["skipped"][0]


def test_all_unreadable_raises_after_max_tries(tmp_path):
    config = _config(max_read_tries=3)
    ds = ClipDataset([tmp_path / f"{i}.mp4" for i in range(5)], [], config)
    with pytest.raises(UserInputError, match="after 3 tries"):
        ds[BatchPlan(5, 0, config, seed=0).batch(0)[0]]


def test_validation_keys_are_fixed(clips):
    ds = ClipDataset(clips, [], _config())
    keys = validation_keys(ds, 4, seed=0)
    assert [k.index for k in keys] == [0, 1, 2, 0] and keys == validation_keys(ds, 4, seed=0)
