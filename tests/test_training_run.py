"""The trainer end to end at toy size on CPU: resume == uninterrupted, truncated checkpoint
ignored, non-finite steps skipped then stopped, export + TensorBoard logs, overfitting real clips."""

import math
import re
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training_data import make_clips

from cvvae.errors import UserInputError
from cvvae.models import CVVAE
from cvvae.models.inflation import inflate_from_image_vae
from cvvae.training import checkpoints as ckpt
from cvvae.training import trainer as trainer_module
from cvvae.training.config import load_config
from cvvae.training.trainer import NonFiniteLossError, Trainer, load_image_vae, lr_factor

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    make_clips(folder)
    return folder


def tiny(out: Path, clips: Path, *overrides: str):
    return load_config(
        TINY,
        [
            f"output_dir={out}",
            f"data.videos=[{clips}]",
            "data.video_shapes=[[5, 16]]",
            "data.batch_size=1",
            "data.num_workers=0",
            "max_steps=4",
            "checkpoint_every=1",
            "keep_checkpoints=3",
            "log_every=1",
            "image_log_every=2",
            "loss.gan_start=1",
            "loss.encoder_reg_weight=0.5",
            "loss.psi=random",
            *overrides,
        ],
    )


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 4, 20, 0.1) == 0.25 and lr_factor(3, 4, 20, 0.1) == 1.0
    assert lr_factor(4, 4, 20, 0.1) == 1.0 and lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert lr_factor(12, 4, 20, 0.0) == pytest.approx(0.5)


def test_resume_equals_uninterrupted_and_truncated_checkpoint_is_ignored(tmp_path, clips):
    full = Trainer(tiny(tmp_path / "a", clips))
    full.run()
    assert set(full.step_losses) == {1, 2, 3, 4} and "disc" in full.step_losses[4]

    first = Trainer(tiny(tmp_path / "b", clips, "data.num_workers=1"))
    assert first.run(stop_after=3) is None
    root = tmp_path / "b" / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == [
        "step-00000001",
        "step-00000002",
        "step-00000003",
    ]
    state_file = root / "step-00000003" / ckpt.STATE
    state_file.write_bytes(state_file.read_bytes()[:1000])  # a checkpoint cut mid-write

    resumed = Trainer(tiny(tmp_path / "b", clips))
    assert resumed.step == 2  # step 3's checkpoint was ignored
    resumed.run()
    for step in (3, 4):
        assert resumed.step_losses[step].keys() == full.step_losses[step].keys()
        for name, value in full.step_losses[step].items():
            assert resumed.step_losses[step][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (
                step,
                name,
            )
    for (name, a), b in zip(
        full.vae.state_dict().items(), resumed.vae.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_export_and_tensorboard_logs(tmp_path, clips):
    trainer = Trainer(tiny(tmp_path, clips, "max_steps=2"))
    exported = trainer.run()
    model = CVVAE.from_pretrained(exported)
    for (name, a), b in zip(
        trainer.ema.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert load_config(exported / "train_config.yaml") == trainer.config
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "loss/l1",
        "loss/kl",
        "loss/decoder_reg",
        "loss/encoder_reg",
        "loss/gan",
        "loss/disc",
        "loss/gan_weight",
        "lr/ae",
        "lr/disc",
        "grad_norm/ae",
        "grad_norm/disc",
        "throughput/samples_per_s",
        "data/skipped_files",
    ):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("loss/l1")] == [1, 2]
    assert "val/reconstruction" in events.Tags()["images"]


def test_nonfinite_steps_are_skipped_then_stop_the_run(tmp_path, clips, monkeypatch):
    trainer = Trainer(tiny(tmp_path / "a", clips, "max_nonfinite=1", "loss.gan_weight=0"))
    calls = {"n": 0}
    real_l1 = trainer.l1.forward

    def sometimes_nan(x, x_hat):
        calls["n"] += 1
        terms = real_l1(x, x_hat)
        return {"l1": terms["l1"] * math.nan} if calls["n"] in (2, 4) else terms

    monkeypatch.setattr(trainer.l1, "forward", sometimes_nan)
    with pytest.raises(NonFiniteLossError, match="2 steps had non-finite losses"):
        trainer.run()
    assert set(trainer.step_losses) == {1, 3} and trainer.nonfinite == 2
    assert all(torch.isfinite(p).all() for p in trainer.vae.parameters())


def test_unreadable_video_is_skipped_counted_and_the_run_goes_on(tmp_path, clips, caplog):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 50)
    csv = tmp_path / "list.csv"
    csv.write_text("path\n" + "".join(f"{p}\n" for p in [bad, *sorted(clips.glob("*.mp4"))]))
    trainer = Trainer(
        tiny(
            tmp_path / "run",
            clips,
            f"data.videos=[{csv}]",
            "max_steps=6",
            "loss.gan_weight=0",
            "loss.encoder_reg_weight=0",
            "num_val_clips=0",
        )
    )
    trainer.run()
    assert trainer.step == 6 and trainer.skipped >= 1
    assert "bad.mp4" in caplog.text


@pytest.mark.slow
def test_tiny_run_overfits_real_clips(tmp_path, clips):
    trainer = Trainer(
        tiny(
            tmp_path,
            clips,
            "data.video_shapes=[[9, 32]]",
            "max_steps=60",
            "checkpoint_every=60",
            "loss.gan_weight=0",
            "loss.encoder_reg_weight=0",
            "optim.lr=2e-3",
            "optim.warmup_steps=5",
        )
    )
    trainer.run()
    losses = trainer.step_losses
    early = [losses[s]["l1"] for s in (1, 2, 3)]
    late = [losses[s]["l1"] for s in (58, 59, 60)]
    reg_early = [losses[s]["decoder_reg"] for s in (1, 2, 3)]
    reg_late = [losses[s]["decoder_reg"] for s in (58, 59, 60)]
    assert sum(late) <= 0.5 * sum(early), (early, late)
    assert sum(reg_late) < sum(reg_early), (reg_early, reg_late)


class _ScaledAccelerator(Accelerator):
    """Accelerate gives no loss scaler on the CPU; this one has a real one that doubles its
    scale every step, so a resume that forgot its state would be seen."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)


def test_resume_restores_the_loss_scaler(tmp_path, clips, monkeypatch):
    monkeypatch.setattr(trainer_module, "Accelerator", _ScaledAccelerator)
    args = ("max_steps=3", "loss.gan_weight=0", "num_val_clips=0")
    full = Trainer(tiny(tmp_path / "a", clips, *args))
    full.run()
    first = Trainer(tiny(tmp_path / "b", clips, *args))
    first.run(stop_after=1)
    resumed = Trainer(tiny(tmp_path / "b", clips, *args))
    assert resumed.step == 1
    assert resumed.accelerator.scaler.get_scale() == first.accelerator.scaler.get_scale()
    resumed.run()
    assert resumed.accelerator.scaler.state_dict() == full.accelerator.scaler.state_dict()
    assert full.accelerator.scaler.get_scale() == 2.0**13
    for step in (2, 3):
        for name, value in full.step_losses[step].items():
            assert resumed.step_losses[step][name] == pytest.approx(value, rel=1e-5, abs=1e-7)


def test_resume_from_a_checkpoint_of_another_config_is_one_line(tmp_path, clips):
    Trainer(tiny(tmp_path, clips, "num_val_clips=0")).run(stop_after=1)
    with pytest.raises(UserInputError, match=r"written with other settings: loss.disc_channels"):
        Trainer(tiny(tmp_path, clips, "loss.disc_channels=4", "loss.disc_norm_groups=2"))


def test_non_finite_model_is_not_exported(tmp_path, clips, monkeypatch):
    trainer = Trainer(tiny(tmp_path, clips, "max_steps=1", "num_val_clips=0"))
    monkeypatch.setattr(trainer_module, "update_ema", lambda ema, model, decay: _poison(ema))
    with pytest.raises(NonFiniteLossError, match="non-finite parameters"):
        trainer.run()
    assert not (tmp_path / "model").exists()


def _poison(module: torch.nn.Module) -> None:
    with torch.no_grad():
        next(module.parameters()).fill_(math.inf)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("log_with=wandb", "log_with=wandb: that tracker's package is not installed"),
        (
            "model.image_vae_init.block_out_channels=[8]",
            "model.image_vae_init does not make an AutoencoderKL",
        ),
        ("model.image_vae_init=null", "model.image_vae folder not found"),
        ("model.init_from=/no/such/folder", "model.init_from folder not found"),
    ],
)
def test_bad_model_or_tracker_settings_are_one_line(tmp_path, clips, override, message):
    extra = ["model.image_vae=/no/such/vae"] if override == "model.image_vae_init=null" else []
    if override == "log_with=wandb" and "wandb" in {
        str(t) for t in __import__("accelerate").tracking.get_available_trackers()
    }:
        pytest.skip("wandb is installed here")
    with pytest.raises(UserInputError, match=re.escape(message)):
        Trainer(tiny(tmp_path, clips, override, *extra))
    assert not tmp_path.joinpath("tensorboard").exists()


def test_init_from_with_other_latent_channels_is_refused(tmp_path, clips):
    image_vae = load_image_vae(tiny(tmp_path, clips))
    model = inflate_from_image_vae(image_vae)
    model.save_pretrained(tmp_path / "m4")
    config = tiny(tmp_path, clips, f"model.init_from={tmp_path / 'm4'}")
    config.model.image_vae_init["latent_channels"] = 16
    with pytest.raises(UserInputError, match="has 4 latent channels but the image VAE has 16"):
        Trainer(config)


def test_an_interrupted_checkpoint_write_leaves_no_folder(tmp_path, clips, monkeypatch):
    trainer = Trainer(tiny(tmp_path, clips, "num_val_clips=0"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM under the CLI

    monkeypatch.setattr(ckpt, "finish_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_freeze_encoder_trains_the_decoder_only_and_keeps_the_latents(tmp_path, clips):
    """Decoder-only fine-tuning: the exported encoder (and so every latent) is bit-identical to
    ``init_from``'s, the decoder moved."""
    start = inflate_from_image_vae(load_image_vae(tiny(tmp_path, clips)))
    start.save_pretrained(tmp_path / "start")
    config = tiny(
        tmp_path / "run",
        clips,
        f"model.init_from={tmp_path / 'start'}",
        "model.freeze_encoder=true",
        "loss.decoder_reg_weight=0",
        "num_val_clips=0",
    )
    trained = CVVAE.from_pretrained(Trainer(config).run())
    before, after = start.state_dict(), trained.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
