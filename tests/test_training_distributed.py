"""Two processes (torchrun, gloo on CPU) train a few steps and end with identical weights."""

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
from test_training_data import make_clips

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

ENTRY = """
import sys, torch
from cvvae.training import load_config
from cvvae.training.trainer import Trainer
trainer = Trainer(load_config(sys.argv[1], sys.argv[3:]))
trainer.run()
rank = trainer.accelerator.process_index
torch.save({"vae": trainer.vae.state_dict(), "ema": trainer.ema.state_dict(),
            "disc": trainer.accelerator.unwrap_model(trainer.disc).state_dict(),
            "losses": trainer.step_losses, "world": trainer.accelerator.num_processes},
           f"{sys.argv[2]}/rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_identical_weights(tmp_path):
    clips = tmp_path / "clips"
    make_clips(clips, count=4)
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        f"data.videos=[{clips}]",
        "data.video_shapes=[[5, 16]]",
        "data.batch_size=1",
        "data.num_workers=0",
        "max_steps=3",
        "grad_accum=2",
        "checkpoint_every=2",
        "log_every=1",
        "loss.gan_start=1",
        "loss.encoder_reg_weight=0.5",
        "num_val_clips=1",
    ]
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(TINY),
        str(tmp_path),
        *overrides,
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=400, env={"OMP_NUM_THREADS": "1", "PATH": ""}
    )
    assert result.returncode == 0, result.stderr[-8000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for part in ("vae", "ema", "disc"):
        for name, a in r0[part].items():
            assert torch.equal(a, r1[part][name]), (part, name)
    # the ranks trained on different data (their local losses differ) but stayed in sync
    assert r0["losses"][1]["l1"] != r1["losses"][1]["l1"]
    exported = tmp_path / "run" / "model" / "diffusion_pytorch_model.safetensors"
    assert (
        exported.is_file()
        and (tmp_path / "run" / "checkpoints" / "step-00000003" / "rng-1.safetensors").is_file()
    )
