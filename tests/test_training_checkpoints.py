"""Crash-safe checkpoints: temp name + rename, keep last K, truncated or half-written ignored."""

from pathlib import Path

import torch

from cvvae.training import checkpoints as ckpt
from cvvae.training.config import TrainConfig, load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _save(root, step, config, keep=3, ranks=1):
    tmp = ckpt.begin_checkpoint(root, step)
    for rank in range(ranks):
        ckpt.write_rank_state(tmp, rank, {"rank": rank})
    return ckpt.finish_checkpoint(
        tmp, {"step": step, "w": torch.full((64,), float(step))}, config, keep
    )


def test_round_trip_with_config_and_rank_state(tmp_path):
    config = load_config(TINY)
    path = _save(tmp_path, 5, config, ranks=2)
    assert path.name == "step-00000005" and not list(tmp_path.glob("*.tmp"))
    state, rank_state = ckpt.load_checkpoint(path, 1)
    assert state["step"] == 5 and torch.equal(state["w"], torch.full((64,), 5.0))
    assert rank_state == {"rank": 1}
    assert ckpt.load_checkpoint(path, 2)[1] is None
    assert load_config(path / "config.yaml") == config


def test_keeps_last_k_and_finds_latest(tmp_path):
    config = TrainConfig()
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, config, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    assert ckpt.find_latest_checkpoint(tmp_path).name == "step-00000040"


def test_truncated_checkpoint_is_ignored(tmp_path):
    config = TrainConfig()
    _save(tmp_path, 10, config)
    newest = _save(tmp_path, 20, config)
    state_file = newest / ckpt.STATE
    data = state_file.read_bytes()
    state_file.write_bytes(data[: len(data) // 2])  # cut mid-write
    assert not ckpt.is_complete(newest)
    assert ckpt.find_latest_checkpoint(tmp_path).name == "step-00000010"


def test_half_written_temp_folder_and_missing_manifest_are_ignored(tmp_path):
    config = TrainConfig()
    _save(tmp_path, 10, config)
    tmp = ckpt.begin_checkpoint(tmp_path, 20)  # crash before finish: only the temp folder exists
    torch.save({"step": 20}, tmp / ckpt.STATE)
    no_manifest = _save(tmp_path, 30, config)
    (no_manifest / ckpt.MANIFEST).unlink()
    assert ckpt.find_latest_checkpoint(tmp_path).name == "step-00000010"
    # a new save over the same step replaces a leftover temp folder
    assert _save(tmp_path, 20, config).name == "step-00000020"


def test_empty_or_missing_root_has_no_checkpoint(tmp_path):
    assert ckpt.find_latest_checkpoint(tmp_path / "nothing") is None


def test_rng_capture_restore():
    state = ckpt.capture_rng()
    a = torch.rand(3)
    ckpt.restore_rng(state)
    assert torch.equal(torch.rand(3), a)
