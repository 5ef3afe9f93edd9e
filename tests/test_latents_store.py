"""Dataset encoding logic and storage without a model: shares, merging, crash leftovers, reader."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from cvvae.errors import UserInputError
from cvvae.latents import LatentDataset, clip_sources, merge_rows, rank_share, read_manifest
from cvvae.latents.encode_dataset import done_row, failed_row, pending
from cvvae.latents.store import ManifestWriter, ShardWriter, write_settings

SETTINGS = {"scaling_factor": 0.5, "shift_factor": 0.25, "frames": 9}


def test_rank_shares_partition_the_list():
    for world in (1, 2, 3, 8):
        shares = [list(rank_share(10, r, world)) for r in range(world)]
        assert sorted(i for s in shares for i in s) == list(range(10))
    with pytest.raises(ValueError):
        rank_share(10, 2, 2)


def test_keys_are_relative_to_the_list_and_unique(tmp_path):
    sources = clip_sources([tmp_path / "a.mp4", tmp_path / "sub" / "b.mp4"], tmp_path)
    assert [(s.index, s.key) for s in sources] == [(0, "a.mp4"), (1, "sub/b.mp4")]
    with pytest.raises(ValueError, match="listed twice: a.mp4"):
        clip_sources([tmp_path / "a.mp4", tmp_path / "sub" / ".." / "a.mp4"], tmp_path)


def test_merge_prefers_done_then_latest_and_pending_skips_recorded_keys(tmp_path):
    a, b, c = clip_sources([tmp_path / n for n in ("a", "b", "c")], tmp_path)
    z = torch.zeros(4, 1, 2, 2)
    retried = done_row(b, 1, (3, 1, 16, 16), "25", z, "s.safetensors", None)
    rows = [retried, failed_row(b, 0, "broken"), failed_row(c, 0, "old"), failed_row(c, 0, "new")]
    merged = merge_rows(rows)
    assert merged["b"]["status"] == "done" and merged["c"]["error"] == "new"
    assert pending([a, b, c], range(3), merged, retry_failed=False) == [a]
    assert pending([a, b, c], range(3), merged, retry_failed=True) == [a, c]


def _rows(tmp_path, *names):
    return [failed_row(s, 0, "x") for s in clip_sources([tmp_path / n for n in names], tmp_path)]


def test_manifest_drops_a_line_cut_by_a_crash(tmp_path):
    a, c = _rows(tmp_path, "a", "c")
    (tmp_path / "manifest").mkdir()
    path = tmp_path / "manifest" / "rank-00000.jsonl"
    path.write_text(json.dumps(a) + '\n{"key": "b", "sta')
    assert read_manifest(tmp_path) == [a]
    ManifestWriter(tmp_path, 0).append(c)
    assert read_manifest(tmp_path) == [a, c]


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json",
        b"[1, 2]",
        b"null",
        b'{"key": "b"}',
        b'{"key": 5, "status": "failed", "index": 1, "time": 1.0}',
        b'{"key": "b", "status": "done", "index": 1, "time": 1.0}',
        b"\xff\xfe",
    ],
)
def test_a_corrupt_manifest_line_is_skipped_with_a_warning(tmp_path, caplog, bad):
    a, c = _rows(tmp_path, "a", "c")
    (tmp_path / "manifest").mkdir()
    path = tmp_path / "manifest" / "rank-00000.jsonl"
    path.write_bytes(json.dumps(a).encode() + b"\n" + bad + b"\n" + json.dumps(c).encode() + b"\n")
    assert read_manifest(tmp_path) == [a, c]
    assert "skipping unreadable manifest line 2" in caplog.text


def test_shard_writer_rotates_and_cleans_its_own_leftovers(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "rank-00001-00004.safetensors").write_bytes(b"old")
    mine = shards / ".rank-00001-00005.1234abcd.partial.safetensors"
    other = shards / ".rank-00002-00000.1234abcd.partial.safetensors"
    mine.write_bytes(b"cut")
    other.write_bytes(b"cut")
    writer = ShardWriter(tmp_path, 1, clips_per_shard=2)
    assert not mine.exists() and other.exists()
    names = [writer.add(k, torch.full((2,), float(i))) for i, k in enumerate("abc")]
    assert names == [
        "rank-00001-00005.safetensors",
        "rank-00001-00005.safetensors",
        "rank-00001-00006.safetensors",
    ]
    assert not list(shards.glob(".rank-00001-*"))


def test_settings_must_match_on_rerun(tmp_path):
    write_settings(tmp_path, SETTINGS)
    write_settings(tmp_path, dict(SETTINGS))
    with pytest.raises(UserInputError, match=r"other settings \(frames\)"):
        write_settings(tmp_path, {**SETTINGS, "frames": 17})


def _dataset(root: Path) -> list[torch.Tensor]:
    """A two-rank dataset by hand: clips 0 and 2 on rank 0, clip 1 failed on rank 1."""
    write_settings(root, SETTINGS)
    sources = clip_sources([root / f"c{i}.mp4" for i in range(3)], root)
    latents = [torch.randn(4, 3, 2, 2) for _ in range(3)]
    writer, manifest = ShardWriter(root, 0, 16), ManifestWriter(root, 0)
    for i in (2, 0):
        shard = writer.add(sources[i].key, latents[i])
        manifest.append(done_row(sources[i], 0, (3, 9, 16, 16), "30000/1001", latents[i], shard, 0))
    ManifestWriter(root, 1).append(failed_row(sources[1], 1, "corrupt video stream: c1.mp4"))
    return latents


def test_dataset_reads_in_list_order_scaled_or_raw_in_workers(tmp_path):
    latents = _dataset(tmp_path)
    raw, scaled = LatentDataset(tmp_path, scaled=False), LatentDataset(tmp_path, scaled=True)
    assert len(raw) == 2 and [r["key"] for r in raw.failed] == ["c1.mp4"]
    item = raw[1]
    assert item["key"] == "c2.mp4" and item["index"] == 2
    assert (item["frames"], item["height"], item["width"]) == (9, 16, 16)
    assert item["fps"] == pytest.approx(30000 / 1001)
    assert torch.equal(item["latents"], latents[2])
    assert torch.equal(scaled[1]["latents"], (latents[2] - 0.25) * 0.5)
    loader = DataLoader(scaled, batch_size=2, num_workers=2)
    (batch,) = list(loader)
    assert batch["key"] == ["c0.mp4", "c2.mp4"]
    assert torch.equal(batch["latents"], torch.stack([(z - 0.25) * 0.5 for z in latents[::2]]))


def test_dataset_needs_a_dataset_folder(tmp_path):
    with pytest.raises(UserInputError, match="not a latent dataset folder"):
        LatentDataset(tmp_path, scaled=False)
