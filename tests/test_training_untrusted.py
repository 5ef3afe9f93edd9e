"""No code runs from a planted file: every file the trainer reads is refused if it is a pickle
that would execute something (checkpoint states, RNG states, the image VAE, init_from, LPIPS)."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from test_training_data import make_clips
from test_training_run import tiny

from cvvae.errors import UserInputError
from cvvae.training import checkpoints as ckpt
from cvvae.training.config import load_config
from cvvae.training.lpips import load_lpips
from cvvae.training.trainer import Trainer, build_video_vae, load_image_vae

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    make_clips(folder, count=1)
    return folder


class Planted:
    """Unpickling this creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path, zipped: bool = True) -> None:
    """Write a pickle at ``path`` that touches ``marker`` when loaded unsafely."""
    if zipped:
        torch.save({"step": 1, "x": Planted(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"step": 1, "x": Planted(marker)}))


def test_the_planted_pickle_does_run_code_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()  # the fixture is dangerous; the tests below show it never runs


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("target", ["state.pt", "rng-0.pt"])
def test_legacy_checkpoint_files_are_refused(tmp_path, zipped, target):
    folder, marker = tmp_path / "step-00000001", tmp_path / "ran"
    folder.mkdir()
    torch.save({"step": 1, "w": torch.zeros(2)}, folder / "state.pt")
    torch.save(ckpt.capture_rng(), folder / "rng-0.pt")  # NumPy arrays: on the allow-list
    plant(folder / target, marker, zipped)
    files = {n: (folder / n).stat().st_size for n in ("state.pt", "rng-0.pt")}
    (folder / ckpt.MANIFEST).write_text(json.dumps({"files": files}))
    assert ckpt.is_complete(folder)
    with pytest.raises(UserInputError, match=f"refused to load checkpoint file.*{target}"):
        ckpt.load_checkpoint(folder, 0)
    assert not marker.exists()


def test_legacy_checkpoint_without_code_still_loads(tmp_path):
    folder = tmp_path / "step-00000001"
    folder.mkdir()
    rng = ckpt.capture_rng()
    torch.save({"step": 1, "w": torch.ones(2)}, folder / "state.pt")
    torch.save(rng, folder / "rng-0.pt")
    state, rank_state = ckpt.load_checkpoint(folder, 0)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(2))
    assert rank_state["python"] == rng["python"]


@pytest.mark.parametrize("target", [ckpt.STATE, "rng-0.safetensors"])
def test_pickle_under_a_safetensors_name_is_refused(tmp_path, target):
    folder, marker = tmp_path / "step-00000001", tmp_path / "ran"
    folder.mkdir()
    ckpt.save_state({"step": 1}, folder / ckpt.STATE)
    ckpt.save_state(ckpt.capture_rng(), folder / "rng-0.safetensors")
    plant(folder / target, marker)
    with pytest.raises(UserInputError, match="damaged training state file"):
        ckpt.load_checkpoint(folder, 0)
    assert not marker.exists()


def test_a_safetensors_file_of_another_kind_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(UserInputError, match="not a cvvae training state file"):
        ckpt.load_state(tmp_path / "x.safetensors")


def test_trainer_refuses_a_planted_checkpoint_with_resume_auto_and_path(tmp_path, clips):
    marker = tmp_path / "ran"
    out = tmp_path / "run"
    folder = out / "checkpoints" / "step-00000003"
    folder.mkdir(parents=True)
    plant(folder / "state.pt", marker)
    (folder / ckpt.MANIFEST).write_text(
        json.dumps({"files": {"state.pt": (folder / "state.pt").stat().st_size}})
    )
    with pytest.raises(UserInputError, match="refused to load checkpoint file"):
        Trainer(tiny(out, clips))
    with pytest.raises(UserInputError, match="refused to load checkpoint file"):
        Trainer(tiny(tmp_path / "other", clips, f"resume={folder}"))
    assert not marker.exists()


def test_image_vae_bin_pickle_is_refused(tmp_path):
    folder, marker = tmp_path / "vae", tmp_path / "ran"
    config = load_config(TINY)
    AutoencoderKL(**config.model.image_vae_init).save_pretrained(folder, safe_serialization=False)
    plant(folder / "diffusion_pytorch_model.bin", marker)
    config = load_config(TINY, ["model.image_vae_init=null", f"model.image_vae={folder}"])
    with pytest.raises(UserInputError, match="cannot load the image VAE"):
        load_image_vae(config)
    assert not marker.exists()


def test_init_from_with_pickled_weights_is_refused(tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "ran"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "CVVAE"}))
    plant(folder / "diffusion_pytorch_model.bin", marker)
    config = load_config(TINY, [f"model.init_from={folder}"])
    with pytest.raises(UserInputError, match="diffusion_pytorch_model.safetensors"):
        build_video_vae(config, load_image_vae(config))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["lpips.pth", "lpips.safetensors"])
def test_lpips_pickle_is_refused(tmp_path, name):
    marker = tmp_path / "ran"
    plant(tmp_path / name, marker)
    with pytest.raises(UserInputError, match="LPIPS weights"):
        load_lpips(tmp_path / name)
    assert not marker.exists()
