"""Typed training configuration: dataclasses loaded from YAML, ``key=value`` overrides, validation.

A config file mirrors the dataclasses below (sections ``model``, ``data``, ``loss``, ``optim``
plus top-level run settings). Unknown keys, wrong types and impossible values raise
:class:`cvvae.errors.UserInputError` before anything is built.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cvvae.errors import UserInputError

PSI_MODES = ("first", "slice", "mean", "blend", "random")
DISTANCES = ("l1", "l2")
PRECISIONS = ("no", "fp16", "bf16")
# Accelerate's experiment trackers; each but TensorBoard needs its package installed.
TRACKERS = (
    "tensorboard",
    "wandb",
    "mlflow",
    "comet_ml",
    "aim",
    "clearml",
    "dvclive",
    "swanlab",
    "trackio",
)
MAX_SEED = 2**32 - 1  # NumPy's seed range


@dataclass
class ModelConfig:
    """Where the frozen image VAE and the trained video VAE come from.

    Exactly one of ``image_vae`` (a local diffusers ``AutoencoderKL`` folder) and
    ``image_vae_init`` (``AutoencoderKL`` constructor arguments for a randomly initialised,
    seeded image VAE, for toy runs) must be set. The video VAE is inflated from the image VAE
    unless ``init_from`` names a saved CV-VAE folder to continue from. ``freeze_encoder`` trains
    the decoder only: the latents of ``init_from`` stay exactly as they were (as Stable
    Diffusion's fine-tuned VAE decoders did), so only a finished model's decoder is improved.
    """

    image_vae: str | None = None
    image_vae_subfolder: str | None = None
    image_vae_init: dict | None = None
    init_from: str | None = None
    freeze_encoder: bool = False
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    """Training data. ``videos``: folders or ``.csv``/``.jsonl`` lists; ``images``: folders.

    ``video_shapes`` lists ``[frames, size]`` pairs (frames = 1 + 4k, square crops of ``size``);
    each video batch uses one pair. ``image_ratio`` is the fraction of batches made of images
    (T = 1 clips of ``image_size``). Clips are read with a random frame stride drawn from
    ``frame_stride`` (inclusive range), resized so the short side is ``size * s`` with ``s``
    uniform in ``resize_range``, then randomly cropped. A ``hue_rotation`` share of samples
    has its hue turned by a random angle (a colour augmentation; luma and greys unchanged).
    """

    videos: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    video_shapes: list[list[int]] = field(default_factory=lambda: [[9, 256]])
    image_size: int = 256
    image_ratio: float = 0.0
    frame_stride: list[int] = field(default_factory=lambda: [1, 8])
    resize_range: list[float] = field(default_factory=lambda: [1.0, 1.25])
    hue_rotation: float = 0.0
    batch_size: int = 1
    num_workers: int = 2
    max_read_tries: int = 8


@dataclass
class LossConfig:
    """Loss weights and settings; every term is a per-element mean.

    ``decoder_reg_weight``/``encoder_reg_weight`` weight the latent regularization through the
    frozen image VAE (decoder-based ``|psi(X) - D_img(E_vid(X))|``, encoder-based
    ``|X - D_vid(E_img(psi(X)))|``); 0 turns a term off. ``lpips_path`` is a local LPIPS
    safetensors file (see ``cvvae.training.lpips``); without it the perceptual term is off.
    The GAN term starts at ``gan_start`` (optimizer steps); ``gan_weight`` 0 turns it off.
    """

    l1_weight: float = 1.0
    kl_weight: float = 1.0e-4
    lpips_weight: float = 0.5
    lpips_path: str | None = None
    gan_weight: float = 0.5
    gan_start: int = 10000
    adaptive_gan_weight: bool = True
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm_groups: int = 32
    decoder_reg_weight: float = 1.0
    encoder_reg_weight: float = 0.0
    reg_distance: str = "l1"
    psi: str = "random"
    psi_slice_offset: int = 3
    psi_slice_share: float = 0.5


@dataclass
class OptimConfig:
    """AdamW for the autoencoder and the discriminator, linear warmup then cosine decay."""

    lr: float = 1.0e-4
    disc_lr: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1.0e-8
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class TrainConfig:
    """A whole training run. ``resume``: ``auto`` (latest valid checkpoint in ``output_dir``,
    if any), ``none``, or a checkpoint folder. Step counts are optimizer steps. ``log_with``
    names the experiment tracker (Accelerate's: ``tensorboard``, ``wandb``, ``mlflow``, ...;
    every one but TensorBoard must be installed separately)."""

    output_dir: str = "runs/cvvae"
    seed: int = 0
    max_steps: int = 200000
    grad_accum: int = 1
    mixed_precision: str = "no"
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    resume: str = "auto"
    log_every: int = 50
    image_log_every: int = 1000
    num_val_clips: int = 2
    max_nonfinite: int = 10
    log_with: str = "tensorboard"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a YAML config (or start from defaults when ``path`` is None), apply ``key=value``
    overrides (dotted keys, YAML values: ``data.batch_size=4``, ``loss.psi=mean``), validate.

    Every problem raises :class:`UserInputError` with one line naming the key, the value and
    the file."""
    raw: dict = {}
    where = "" if path is None else f": {path}"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"config file not found: {path}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserInputError(f"config is not UTF-8 text (byte {error.start}): {path}") from None
        raw = _parse_yaml(text, f"config is not valid YAML{{}}: {path}")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserInputError(f"config must be a YAML mapping: {path}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"override must look like key=value: {item!r}")
        parsed = _parse_yaml(value, f"override {item!r}: the value is not valid YAML{{}}")
        _set_dotted(raw, key.strip(), parsed)
    try:
        config = _build(TrainConfig, raw, "")
        validate(config)
    except UserInputError as error:
        raise UserInputError(f"{error}{where}") from None
    return config


def _parse_yaml(text: str, message: str) -> object:
    """``yaml.safe_load(text)``; a syntax error raises UserInputError with ``message`` (``{}``
    becomes the position)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserInputError(message.format(at)) from None


def config_to_dict(config: TrainConfig) -> dict:
    """Plain nested dict of the config (YAML-safe)."""
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config as YAML; ``load_config(path)`` reads it back equal."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def validate(config: TrainConfig) -> None:
    """Check values that types alone cannot; raise UserInputError naming the key and value."""
    m, d, lo, o = config.model, config.data, config.loss, config.optim
    for key, value in _floats(config, ""):
        _require(math.isfinite(value), f"{key} must be a finite number, got {value!r}")
    _require(0 <= config.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {config.seed}")
    _require(config.log_with in TRACKERS, f"log_with must be one of {TRACKERS}")
    _require(
        (m.image_vae is None) != (m.image_vae_init is None),
        "model: set exactly one of image_vae (a folder) and image_vae_init (random init)",
    )
    if m.freeze_encoder:
        _require(m.init_from is not None, "model.freeze_encoder needs model.init_from")
        _require(
            lo.decoder_reg_weight == 0,
            "model.freeze_encoder: set loss.decoder_reg_weight=0 (it trains only the encoder)",
        )
    _require(bool(d.videos) or bool(d.images), "data: give at least one of videos, images")
    _require(0.0 <= d.image_ratio <= 1.0, "data.image_ratio must be in [0, 1]")
    _require(d.image_ratio == 0.0 or bool(d.images), "data.image_ratio > 0 needs data.images")
    _require(d.image_ratio == 1.0 or bool(d.videos), "data.image_ratio < 1 needs data.videos")
    _require(len(d.video_shapes) > 0, "data.video_shapes must not be empty")
    for shape in d.video_shapes:
        _require(
            len(shape) == 2 and shape[0] >= 1 and (shape[0] - 1) % 4 == 0,
            f"data.video_shapes entries are [frames, size] with frames = 1 + 4k: {shape}",
        )
        _require(
            shape[1] > 0 and shape[1] % 8 == 0,
            f"data.video_shapes size must be a positive multiple of 8: {shape}",
        )
    _require(
        d.image_size > 0 and d.image_size % 8 == 0,
        "data.image_size must be a positive multiple of 8",
    )
    _require(
        len(d.frame_stride) == 2 and 1 <= d.frame_stride[0] <= d.frame_stride[1],
        "data.frame_stride must be [min, max] with 1 <= min <= max",
    )
    _require(
        len(d.resize_range) == 2 and 1.0 <= d.resize_range[0] <= d.resize_range[1],
        "data.resize_range must be [min, max] with 1 <= min <= max",
    )
    _require(0.0 <= d.hue_rotation <= 1.0, "data.hue_rotation must be in [0, 1]")
    _require(d.batch_size >= 1, "data.batch_size must be >= 1")
    _require(d.num_workers >= 0, "data.num_workers must be >= 0")
    _require(d.max_read_tries >= 1, "data.max_read_tries must be >= 1")
    _require(lo.psi in PSI_MODES, f"loss.psi must be one of {PSI_MODES}, got {lo.psi!r}")
    _require(0 <= lo.psi_slice_offset <= 3, "loss.psi_slice_offset must be in 0..3")
    _require(0 <= lo.psi_slice_share <= 1, "loss.psi_slice_share must be in [0, 1]")
    _require(lo.reg_distance in DISTANCES, f"loss.reg_distance must be one of {DISTANCES}")
    for name in (
        "l1_weight",
        "kl_weight",
        "lpips_weight",
        "gan_weight",
        "decoder_reg_weight",
        "encoder_reg_weight",
    ):
        _require(getattr(lo, name) >= 0, f"loss.{name} must be >= 0")
    _require(lo.disc_layers >= 1 and lo.disc_channels >= 1, "loss.disc_layers/disc_channels >= 1")
    _require(
        lo.disc_channels % lo.disc_norm_groups == 0,
        "loss.disc_channels must be divisible by loss.disc_norm_groups",
    )
    _require(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _require(o.disc_lr > 0, f"optim.disc_lr must be > 0, got {o.disc_lr}")
    _require(
        len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas),
        f"optim.betas must be two values in [0, 1), got {o.betas}",
    )
    _require(o.eps > 0, f"optim.eps must be > 0, got {o.eps}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _require(lo.gan_start >= 0, f"loss.gan_start must be >= 0, got {lo.gan_start}")
    _require(0.0 <= o.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
    _require(0.0 <= o.ema_decay < 1.0, "optim.ema_decay must be in [0, 1)")
    _require(o.warmup_steps >= 0 and o.grad_clip >= 0, "optim.warmup_steps/grad_clip must be >= 0")
    _require(
        config.max_steps >= 1 and config.grad_accum >= 1, "max_steps and grad_accum must be >= 1"
    )
    _require(config.mixed_precision in PRECISIONS, f"mixed_precision must be one of {PRECISIONS}")
    _require(
        config.checkpoint_every >= 1 and config.keep_checkpoints >= 1,
        "checkpoint_every and keep_checkpoints must be >= 1",
    )
    _require(
        config.log_every >= 1 and config.image_log_every >= 1,
        "log_every and image_log_every must be >= 1",
    )
    _require(
        config.num_val_clips >= 0 and config.max_nonfinite >= 0,
        "num_val_clips and max_nonfinite must be >= 0",
    )


def _floats(node: object, prefix: str) -> typing.Iterator[tuple[str, float]]:
    """``(dotted key, value)`` of every float in a config, lists included."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            child = f"{prefix}{f.name}" + ("." if dataclasses.is_dataclass(value) else "")
            yield from _floats(value, child)
    elif isinstance(node, list):
        for item in node:
            yield from _floats(item, prefix)
    elif isinstance(node, float):
        yield prefix, node


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserInputError(f"invalid config: {message}")


def _set_dotted(raw: dict, key: str, value: object) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserInputError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: object, prefix: str):
    """Dataclass ``cls`` from a mapping, checking every key and value type."""
    if not isinstance(raw, dict):
        raise UserInputError(f"config section {prefix or '<root>'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserInputError(f"unknown config key: {prefix}{unknown[0]}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check_type(value, hint, f"{prefix}{name}")
    return cls(**values)


def _check_type(value: object, hint: object, key: str) -> object:
    """Return ``value`` (ints and numeric strings such as ``1e-4`` made floats where a float
    is expected) or raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _check_type(value, option, key)
                except UserInputError:
                    continue
        raise UserInputError(f"config key {key}: expected {_type_name(hint)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserInputError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, bool):
        raise UserInputError(f"config key {key}: expected int, got {value!r}")
    if isinstance(value, origin or hint):
        return value
    raise UserInputError(f"config key {key}: expected {_type_name(hint)}, got {value!r}")


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", str(hint))
