"""cvvae encode-dataset end to end: two processes under torchrun, a killed rank and a rerun,
failed rows, and latents equal to ``cvvae encode`` of each clip."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MISSING, REFERENCE, shared_available
from safetensors import safe_open

from cvvae.cli import main
from cvvae.io import read_video, write_video
from cvvae.latents import LatentDataset, read_manifest

MODEL = REFERENCE / "cvvae_sd21_tiny"
pytestmark = pytest.mark.skipif(not shared_available(), reason=MISSING)  # all use MODEL
REAL_CLIP = "pexels_19216241_1280x720_30fps.mp4"
PROTOCOL = ["--frames", "9", "--height", "32", "--width", "48", "--stride", "2"]

# Rank 1 is SIGKILLed while writing its second shard: after the temporary file is complete and
# before its rename, the worst moment for a crash.
KILL_ENTRY = """
import os, signal, sys
import cvvae.latents.store as store
from cvvae.cli import main
if os.environ["RANK"] == "1":
    real_save, calls = store.save_file, []
    def save_then_die(tensors, path, metadata):
        real_save(tensors, path, metadata=metadata)
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    store.save_file = save_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def clip_list(tmp_path_factory, video_paths) -> Path:
    """A CSV of 6 clips: 4 synthetic (19-24 frames, 32x48 or 40x56), one cut of a real video
    and one corrupt file (index 2)."""
    folder = tmp_path_factory.mktemp("clips")
    g = torch.Generator().manual_seed(1)
    names = []
    for i, (frames, h, w) in enumerate([(19, 32, 48), (24, 40, 56), (20, 32, 48), (22, 32, 48)]):
        video = torch.rand(3, frames, h, w, generator=g) * 2 - 1
        write_video(folder / f"synthetic{i}.mp4", video.cumsum(1).clamp(-1, 1), 25)
        names.append(f"synthetic{i}.mp4")
    real, info = read_video(next(p for p in video_paths if p.name == REAL_CLIP), 0, 19, 1, (36, 64))
    (folder / "sub").mkdir()
    write_video(folder / "sub" / "real.mp4", real, info.rate)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    names[2:2] = ["corrupt.mp4"]
    names.append("sub/real.mp4")
    (folder / "list.csv").write_text("path\n" + "\n".join(names) + "\n")
    return folder / "list.csv"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: list[str], *args) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), *script, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _encode_dataset(clip_list: Path, out: Path) -> subprocess.CompletedProcess:
    args = ["encode-dataset", clip_list, out, "--model", MODEL, "--clips-per-shard", "2"]
    return _torchrun(["-m", "cvvae.cli"], *args, *PROTOCOL)


def _cvvae_encode(source: Path, tmp_path: Path, *extra: str) -> torch.Tensor:
    """Latents of ``cvvae encode`` for one clip, one thread like the torchrun workers."""
    out = tmp_path / f"{source.stem}.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["encode", str(source), str(out), "--model", str(MODEL), *PROTOCOL, *extra])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    with safe_open(str(out), framework="pt") as f:
        return f.get_tensor("latents")


def _check_complete(out: Path, clip_list: Path, tmp_path: Path) -> None:
    """Every listed clip has exactly one row; the corrupt one failed with its reason; the rest
    read back equal to ``cvvae encode``; no temporary shard is left."""
    rows = read_manifest(out)
    keys = sorted(r["key"] for r in rows)
    listed = clip_list.read_text().split()[1:]
    assert keys == sorted(listed)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["corrupt.mp4"]
    assert failed[0]["error"].startswith("not a readable video file")
    data = LatentDataset(out, scaled=False)
    assert [item["key"] for item in data] == [k for k in listed if k != "corrupt.mp4"]
    for item in data:
        assert item["latents"].shape == (4, 3, 4, 6)
        assert (item["frames"], item["height"], item["width"]) == (9, 32, 48)
        expected = _cvvae_encode(clip_list.parent / item["key"], tmp_path)
        assert torch.equal(item["latents"], expected), item["key"]
    assert not list((out / "shards").glob(".*partial*"))


def test_two_processes_encode_a_list_like_cvvae_encode(clip_list, tmp_path):
    out = tmp_path / "latents"
    result = _encode_dataset(clip_list, out)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_manifest(out)
    assert {r["rank"] for r in rows} == {0, 1}
    assert all(r["rank"] == r["index"] % 2 for r in rows)
    assert "rank 0/2: 2 clips done, 1 failed" in result.stdout
    assert "rank 1/2: 3 clips done, 0 failed" in result.stdout
    _check_complete(out, clip_list, tmp_path)
    # shards hold at most 2 clips: rank 0 encoded 2, rank 1 encoded 3
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "rank-00000-00000.safetensors",
        "rank-00001-00000.safetensors",
        "rank-00001-00001.safetensors",
    ]


@pytest.mark.slow  # two torchrun launches, about 40 s on 2 shared cores
def test_killed_rank_then_rerun_completes_every_clip_exactly_once(clip_list, tmp_path):
    out = tmp_path / "latents"
    entry = tmp_path / "kill_entry.py"
    entry.write_text(KILL_ENTRY)
    args = ["encode-dataset", clip_list, out, "--model", MODEL, "--clips-per-shard", "1"]
    killed = _torchrun([str(entry)], *args, *PROTOCOL)
    assert killed.returncode != 0
    assert f"exitcode  : -{int(signal.SIGKILL)}" in killed.stderr
    # rank 1 finished its first clip (index 1) and died while writing the second's shard
    rank1 = [r for r in read_manifest(out) if r["rank"] == 1]
    assert [r["index"] for r in rank1] == [1]
    assert len(list((out / "shards").glob(".rank-00001-*.partial.safetensors"))) == 1

    rerun = _encode_dataset(clip_list, out)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "rank 1/2: 2 clips done, 0 failed, 1 already in the manifest" in rerun.stdout
    _check_complete(out, clip_list, tmp_path)


def test_sampled_latents_match_cvvae_encode_with_the_recorded_seed(clip_list, tmp_path, capsys):
    out = tmp_path / "latents"
    code = main(
        [
            "encode-dataset",
            str(clip_list),
            str(out),
            "--model",
            str(MODEL),
            "--sample",
            "--seed",
            "7",
            *PROTOCOL,
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = LatentDataset(out, scaled=False)
    scaled = LatentDataset(out, scaled=True)
    assert len(data) == 5 and [r["key"] for r in data.failed] == ["corrupt.mp4"]
    for i, row in enumerate(data.rows):
        assert row["seed"] == 7 + row["index"]
        expected = _cvvae_encode(
            clip_list.parent / row["key"], tmp_path, "--sample", "--seed", str(row["seed"])
        )
        assert torch.equal(data[i]["latents"], expected)
        assert torch.equal(scaled[i]["latents"], expected * 0.18215)

    code = main(
        [
            "encode-dataset",
            str(clip_list),
            str(out),
            "--model",
            str(MODEL),
            "--sample",
            "--seed",
            "7",
            *PROTOCOL,
        ]
    )
    assert code == 0
    assert "0 clips done, 0 failed, 6 already in the manifest" in capsys.readouterr().out
    assert len(read_manifest(out)) == 6

    code = main(["encode-dataset", str(clip_list), str(out), "--model", str(MODEL), *PROTOCOL])
    assert code == 2
    assert "encoded with other settings (posterior, seed)" in capsys.readouterr().err
