"""Bad inputs through the command line: one line on stderr, exit 2 (143 for SIGTERM), no
traceback, no input destroyed and nothing left behind. A tiny random model and tiny files; the
model runs only where a case needs its output."""

import errno
import json
import os
import signal
import struct
import zlib
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cvvae.io
from cvvae import CVVAE
from cvvae.cli import codec, main
from cvvae.io import write_image, write_video


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 4-channel model small enough to run in well under a second on 16x16 frames."""
    torch.manual_seed(0)
    model = CVVAE(
        block_out_channels=(4, 4, 4, 4),
        norm_num_groups=2,
        layers_per_block=1,
        latent_channels=4,
        mid_attention=False,
        decoder_temporal_attention=False,
    )
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, torch.rand(3, 5, 16, 16) * 2 - 1, fps=25)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "image.png"
    write_image(path, torch.rand(3, 16, 16) * 2 - 1)
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, err


def one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvvae: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".tmp")
    )


# ---------------------------------------------------------------------------- inputs kept safe
@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["reconstruct", "encode"])
def test_an_output_that_is_the_input_is_refused_before_any_work(
    tmp_path, capsys, clip, image, model_dir, kind, command
):
    source = tmp_path / ("in.png" if command == "reconstruct" else "in.safetensors")
    source.write_bytes((image if command == "reconstruct" else clip).read_bytes())
    before = source.read_bytes()
    output = {"same": source, "symlink": tmp_path / f"link{source.suffix}"}.get(kind)
    if kind == "symlink":
        output.symlink_to(source)
    elif kind == "hardlink":
        output = tmp_path / f"hard{source.suffix}"
        os.link(source, output)
    code, err = run(capsys, command, source, output, "--model", model_dir)
    assert code == 2
    one_line(err, "the output is the input file")
    assert source.read_bytes() == before


def test_decode_output_that_is_its_input_is_refused(tmp_path, capsys):
    latents = tmp_path / "z.mp4"  # a latents file with a video name
    save_file({"latents": torch.zeros(4, 1, 2, 2)}, str(latents), metadata=_meta())
    code, err = run(capsys, "decode", latents, latents)
    assert code == 2
    one_line(err, "the output is the input file")


# ---------------------------------------------------------------------------- argument values
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "a.mp4", "b.mp4", "--height", "100000", "--width", "8"], "<= 16384"),
        (["reconstruct", "a.mp4", "b.mp4", "--memory-budget", "inf"], "must be > 0 and finite"),
        (["reconstruct", "a.mp4", "b.mp4", "--memory-budget", "nan"], "must be > 0 and finite"),
        (["encode", "a.mp4", "b.safetensors", "--sample", "--seed", str(2**70)], "2**63 - 1"),
        (["encode", "a.mp4", "b.safetensors", "--seed", "-1"], "must be >= 0"),
        (["encode-dataset", "a", "b", "--seed", str(2**64)], "2**63 - 1"),
    ],
)
def test_out_of_range_arguments_are_one_line(capsys, argv, message):
    code, err = run(capsys, *argv)
    assert code == 2
    one_line(err, message)


def test_upper_case_safetensors_extension_is_accepted(tmp_path, capsys, image, model_dir):
    code, err = run(capsys, "encode", image, tmp_path / "z.SAFETENSORS", "--model", model_dir)
    assert code == 0, err


# ---------------------------------------------------------------------------- operating system
def test_output_path_that_is_a_folder(tmp_path, capsys, image, model_dir):
    (tmp_path / "out.png").mkdir()
    code, err = run(capsys, "reconstruct", image, tmp_path / "out.png", "--model", model_dir)
    assert code == 2
    one_line(err, "the output is a folder")


def test_file_name_too_long(tmp_path, capsys, image, model_dir):
    output = tmp_path / ("x" * 260 + ".png")
    code, err = run(capsys, "reconstruct", image, output, "--model", model_dir)
    assert code == 2
    one_line(err, "the file name is too long")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("number", "message"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_os_failures_while_writing_are_one_line_and_leave_nothing(
    tmp_path, capsys, monkeypatch, image, model_dir, number, message
):
    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")  # a partly written temporary file
        raise OSError(number, os.strerror(number), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", fail)  # the encode command's writer
    output = tmp_path / "z.safetensors"
    code, err = run(capsys, "encode", image, output, "--model", model_dir)
    assert code == 2
    one_line(err, message, str(output))
    assert not output.exists() and leftovers(tmp_path) == []


def test_out_of_memory_for_a_requested_size(tmp_path, capsys, monkeypatch, image, model_dir):
    def too_big(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB")

    monkeypatch.setattr(codec, "read_clip", too_big)
    code, err = run(capsys, "reconstruct", image, tmp_path / "o.png", "--model", model_dir)
    assert code == 2
    one_line(err, "out of memory")


def test_sigterm_while_writing_cleans_up_like_ctrl_c(
    tmp_path, capsys, monkeypatch, clip, model_dir
):
    real = cvvae.io._to_uint8

    def terminated_midway(x):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(x)

    monkeypatch.setattr(cvvae.io, "_to_uint8", terminated_midway)
    before = signal.getsignal(signal.SIGTERM)
    output = tmp_path / "out.mp4"
    code, err = run(capsys, "reconstruct", clip, output, "--model", model_dir)
    assert code == 143 and err.strip().endswith("cvvae: terminated")
    assert not output.exists() and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_stale_partial_files_of_killed_writers_are_removed(tmp_path, capsys, image, model_dir):
    dead = _dead_pid()
    stale = [tmp_path / f".out.{dead}-0123abcd.partial.png", tmp_path / ".out.89abcdef.partial.png"]
    alive = tmp_path / f".out.{os.getppid()}-0123abcd.partial.png"  # a running writer's
    other = tmp_path / f".other.{dead}-0123abcd.partial.png"  # another output's
    for path in (*stale, alive, other):
        path.write_bytes(b"cut")
    code, err = run(capsys, "reconstruct", image, tmp_path / "out.png", "--model", model_dir)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and alive.exists() and other.exists()


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_written_files_follow_the_umask(tmp_path, capsys, image, model_dir):
    old = os.umask(0o002)
    try:
        code, err = run(capsys, "encode", image, tmp_path / "z.safetensors", "--model", model_dir)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "z.safetensors").stat().st_mode & 0o777 == 0o664


# ---------------------------------------------------------------------------- model configs
def _model_copy(tmp_path: Path, model_dir: Path, edit_config=None, edit_tensors=None) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    tensors = load_file(model_dir / "diffusion_pytorch_model.safetensors")
    if edit_config is not None:
        config = edit_config(config)
    if edit_tensors is not None:
        edit_tensors(tensors)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def _set(**changes):
    return lambda config: {**config, **changes}


RELEASED = {"_class_name": "CVVAEModel", "ch": 4, "ch_mult": [1, 1, 1, 1], "z_channels": 4}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: [1, 2], "model config must be a JSON object"),
        (lambda c: None, "model config must be a JSON object"),
        (_set(latent_channels="4"), "latent_channels='4' is not a positive integer"),
        (_set(block_out_channels=5), "block_out_channels=5 is not 4 positive integers"),
        (_set(block_out_channels=[4, 4, -4, 4]), "is not 4 positive integers"),
        (_set(norm_num_groups=3), "is not divisible by norm_num_groups=3"),
        (_set(in_channels=-3), "in_channels=-3 is not a positive integer"),
        (_set(scaling_factor="big"), "scaling_factor='big' is not a finite number > 0"),
        (_set(shift_factor=float("nan")), "shift_factor=nan is not a finite number"),
        (_set(mid_attention="yes"), "mid_attention='yes' is not true or false"),
        (lambda c: {**RELEASED, "ch": "abc"}, "ch='abc' is not a positive integer"),
        (lambda c: {**RELEASED, "z_channels": "4"}, "z_channels='4' is not a positive integer"),
        (lambda c: {**RELEASED, "ch_mult": 5}, "ch_mult=5 is not a list of positive integers"),
    ],
)
def test_info_on_a_bad_model_config_is_one_line(tmp_path, capsys, model_dir, edit, message):
    folder = _model_copy(tmp_path, model_dir, edit_config=edit)
    code, err = run(capsys, "info", folder)
    assert code == 2
    one_line(err, message, "config.json")


def test_integer_weights_are_refused(tmp_path, capsys, model_dir):
    def to_int(tensors):
        key = next(iter(tensors))
        tensors[key] = tensors[key].to(torch.int32)

    folder = _model_copy(tmp_path, model_dir, edit_tensors=to_int)
    code, err = run(capsys, "info", folder)
    assert code == 2
    one_line(err, "dtype torch.int32, expected a floating point type")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_one_line_not_a_black_video(
    tmp_path, capsys, model_dir, image, value
):
    def poison(tensors):
        for key in tensors:
            if key.startswith("decoder.conv_out"):
                tensors[key] = torch.full_like(tensors[key], value)

    folder = _model_copy(tmp_path, model_dir, edit_tensors=poison)
    output = tmp_path / "o.png"
    code, err = run(capsys, "reconstruct", image, output, "--model", folder)
    assert code == 2
    one_line(err, "non-finite")
    assert not output.exists()


# ---------------------------------------------------------------------------- latents files
def _meta(**changes) -> dict[str, str]:
    meta = {
        "format": "cvvae-latents",
        "kind": "video",
        "height": "16",
        "width": "16",
        "frames": "1",
        "fps": "25",
        "latents_scaled": "false",
    }
    meta.update(changes)
    return meta


@pytest.mark.parametrize(
    ("meta", "latents", "message"),
    [
        (_meta(fps="0"), None, "fps=0 is not in (0, 10000]"),
        (_meta(fps="-30"), None, "fps=-30 is not in (0, 10000]"),
        (_meta(fps="1e12"), None, "fps=1e12 is not in (0, 10000]"),
        (_meta(fps="1/0"), None, "incomplete metadata"),
        (_meta(height="100000"), None, "height=100000 is not in [1, 16384]"),
        (_meta(frames="-1"), None, "frames=-1 is not >= 1"),
        (_meta(kind="audio"), None, "kind='audio' is not image or video"),
        (_meta(), float("nan"), "latents contain NaN or infinite values"),
        (_meta(), float("inf"), "latents contain NaN or infinite values"),
    ],
)
def test_bad_latents_files_are_one_line(tmp_path, capsys, model_dir, meta, latents, message):
    z = torch.zeros(4, 1, 2, 2) if latents is None else torch.full((4, 1, 2, 2), latents)
    path = tmp_path / "z.safetensors"
    save_file({"latents": z}, str(path), metadata=meta)
    code, err = run(capsys, "decode", path, tmp_path / "o.mp4", "--model", model_dir)
    assert code == 2
    one_line(err, message)
    assert not (tmp_path / "o.mp4").exists()


def test_huge_latents_decode_to_a_one_line_error(tmp_path, capsys, model_dir):
    path = tmp_path / "z.safetensors"
    save_file({"latents": torch.full((4, 1, 2, 2), 1e30)}, str(path), metadata=_meta())
    code, err = run(capsys, "decode", path, tmp_path / "o.mp4", "--model", model_dir)
    assert code == 2
    one_line(err, "non-finite")


def test_encoded_latents_keep_their_metadata_readable(tmp_path, capsys, image, model_dir):
    path = tmp_path / "z.safetensors"
    assert run(capsys, "encode", image, path, "--model", model_dir)[0] == 0
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["kind"] == "image"


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("content", "overrides", "message"),
    [
        (b"seed: [1,\n", [], "config is not valid YAML (line 2, column 1)"),
        (b"seed: \xff\n", [], "config is not UTF-8 text"),
        (b"seed: 0\n", ["optim.lr=.inf"], "optim.lr must be a finite number, got inf"),
        (b"seed: 0\n", ["data.batch_size=["], "the value is not valid YAML"),
        (b"seed: 0\n", [f"seed={2**70}"], "seed must be in [0, 4294967295]"),
    ],
)
def test_train_config_problems_are_one_line(tmp_path, capsys, content, overrides, message):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    code, err = run(capsys, "train", config, *overrides)
    assert code == 2
    one_line(err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


# ---------------------------------------------------------------------------- encode-dataset
def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A PNG whose header claims ``width x height`` pixels (the data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _rows(out: Path) -> dict[str, dict]:
    from cvvae.latents import merged_manifest

    return merged_manifest(out)


def test_encode_dataset_bomb_and_broken_files_are_failed_rows_and_the_run_goes_on(
    tmp_path, capsys, model_dir, image
):
    bomb_png(tmp_path / "bomb.png")
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "good.png").write_bytes(image.read_bytes())
    listing = tmp_path / "list.csv"
    listing.write_text("path\nbomb.png\ntext.mp4\ngood.png\n")
    out = tmp_path / "out"
    code, err = run(capsys, "encode-dataset", listing, out, "--model", model_dir)
    assert code == 0, err
    rows = _rows(out)
    assert rows["good.png"]["status"] == "done"
    assert rows["bomb.png"]["status"] == "failed" and "too large" in rows["bomb.png"]["error"]
    assert rows["text.mp4"]["status"] == "failed"


def test_encode_dataset_corrupt_manifest_line_is_skipped_and_the_clip_redone(
    tmp_path, capsys, caplog, model_dir, image
):
    (tmp_path / "a.png").write_bytes(image.read_bytes())
    (tmp_path / "b.png").write_bytes(image.read_bytes())
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.png\nb.png\n")
    out = tmp_path / "out"
    assert run(capsys, "encode-dataset", listing, out, "--model", model_dir)[0] == 0
    manifest = out / "manifest" / "rank-00000.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(lines[0] + b'{"key": "b.png", garbage\n')
    code, err = run(capsys, "encode-dataset", listing, out, "--model", model_dir)
    assert code == 0, err
    assert "skipping unreadable manifest line 2" in caplog.text
    rows = _rows(out)
    assert rows["a.png"]["status"] == rows["b.png"]["status"] == "done"


def test_encode_dataset_second_writer_is_refused_and_a_stale_lock_taken_over(
    tmp_path, capsys, caplog, model_dir, image
):
    (tmp_path / "a.png").write_bytes(image.read_bytes())
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.png\n")
    out = tmp_path / "out"
    (out / "locks").mkdir(parents=True)
    lock = out / "locks" / "rank-00000.lock"
    lock.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
    code, err = run(capsys, "encode-dataset", listing, out, "--model", model_dir)
    assert code == 2
    one_line(err, "another encode-dataset run", str(os.getppid()))
    assert not (out / "manifest").exists() and not (out / "shards").exists()
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    code, err = run(capsys, "encode-dataset", listing, out, "--model", model_dir)
    assert code == 0, err
    assert "removing a stale lock" in caplog.text and not lock.exists()
    assert _rows(out)["a.png"]["status"] == "done"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("list.csv", "path,caption\n,x\n", "CSV video list row 2 has no path"),
        ("list.csv", "caption,path\nx\n", "CSV video list row 2 has no path"),
        ("list.jsonl", '{"path": 5}\n', "line 1: 'path' must be a non-empty string, got 5"),
        ("list.jsonl", '{"path": null}\n', "got None"),
        ("list.jsonl", '{"file": "a"}\n', "line 1 needs a 'path' key"),
    ],
)
def test_encode_dataset_bad_list_rows_are_one_line_and_create_nothing(
    tmp_path, capsys, model_dir, name, content, message
):
    listing = tmp_path / name
    listing.write_text(content)
    code, err = run(capsys, "encode-dataset", listing, tmp_path / "out", "--model", model_dir)
    assert code == 2
    one_line(err, message, name)
    assert not (tmp_path / "out").exists()


def test_encode_dataset_output_that_is_a_file_or_a_bad_model_creates_nothing(
    tmp_path, capsys, model_dir, image
):
    (tmp_path / "a.png").write_bytes(image.read_bytes())
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.png\n")
    code, err = run(capsys, "encode-dataset", listing, listing, "--model", model_dir)
    assert code == 2
    one_line(err, "the output must be a folder, but it is a file")
    code, err = run(capsys, "encode-dataset", listing, tmp_path / "out", "--model", tmp_path)
    assert code == 2
    one_line(err, "config.json")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- inflate
def test_inflate_of_a_broken_image_vae_is_one_line_without_the_hub(tmp_path, capsys):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    code, err = run(capsys, "inflate", "--image-vae", folder, tmp_path / "out")
    assert code == 2
    one_line(err, "cannot load the image VAE", str(folder))
    assert "Hub" not in err and "connect" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]


def test_inflate_disk_full_leaves_no_temporary_folder(tmp_path, capsys, monkeypatch):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=[4, 4, 4, 4],
        layers_per_block=1,
        norm_num_groups=2,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
    )
    vae.save_pretrained(tmp_path / "vae")

    def full(self, folder, *args, **kwargs):
        Path(folder).mkdir()
        (Path(folder) / "half").write_bytes(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(CVVAE, "save_pretrained", full)
    code, err = run(capsys, "inflate", "--image-vae", tmp_path / "vae", tmp_path / "out")
    assert code == 2
    one_line(err, "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]


# ---------------------------------------------------------------------------- classification
def test_failures_are_classified_as_user_problems_or_bugs():
    from cvvae.cli.failures import describe
    from cvvae.inference.precision import NonFiniteError

    assert describe(NonFiniteError("decoder produced non-finite values"))[0] == 2
    assert "out of memory" in describe(MemoryError())[1]
    assert "out of memory" in describe(torch.OutOfMemoryError("CUDA out of memory"))[1]
    assert describe(OSError(errno.ENOSPC, "No space left", "/x/out.mp4")) == (
        2,
        "the disk is full: /x/out.mp4",
    )
    import av

    assert describe(av.error.InvalidDataError(1094995529, "Invalid data", "c.mp4"))[0] == 2
    assert describe(KeyError("x")) is None and describe(RuntimeError("shape mismatch")) is None
