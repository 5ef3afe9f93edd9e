"""The evaluation protocol: which frames of which sources are measured, at what size.

Every video is read at ``height x width`` (resize to cover, keeping aspect, then center-crop),
taking every ``stride``-th source frame. A *segment* is ``frames`` consecutive read frames;
segment ``s`` of a source uses the source frames

    start + stride * (s * frames + i),   i = 0 .. frames - 1,

so segments follow each other without overlap or gaps in the strided sequence. ``frames`` must
be ``1 + 4k``: the CV-VAE latent grid (``1 + k`` latent frames), the ``psi`` mappings of the
compatibility metrics and the keyframes of uniform sampling all need it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cvvae.errors import UserInputError
from cvvae.evaluation.sampling import keyframe_indices
from cvvae.training.latent_reg import GROUP

FVD_FEATURES = (
    "I3D logits averaged over time, of each clip and of each reconstruction, every frame resized "
    "to 224x224 (bilinear, antialiased), pixels in [-1, 1]; Frechet distance of Gaussians fitted "
    "to all clips' features (mean, unbiased covariance)"
)


@dataclass(frozen=True)
class Protocol:
    """What was measured and how; stored with every result.

    ``models`` maps each evaluated model name to an identifier (path and weights hash, say);
    ``image_vae``, ``lpips`` and ``i3d`` identify the image VAE, LPIPS and I3D (FVD) weights, or
    are None.
    ``seed`` seeds torch before evaluation (the evaluation itself is deterministic: every encoder
    uses its posterior mean).
    """

    frames: int = 17
    height: int = 256
    width: int = 256
    stride: int = 1
    start: int = 0
    segments: int = 1
    seed: int = 0
    models: dict[str, str] = field(default_factory=dict)
    image_vae: str | None = None
    lpips: str | None = None
    i3d: str | None = None

    def __post_init__(self):
        if self.frames < 1 or (self.frames - 1) % GROUP:
            raise UserInputError(f"frames must be 1 + 4k (1, 5, 9, 13, 17, ...), got {self.frames}")
        if self.height % 8 or self.width % 8 or min(self.height, self.width) < 16:
            raise UserInputError(
                f"height and width must be multiples of 8 and at least 16, got {self.height}x{self.width}"
            )
        if self.stride < 1 or self.start < 0 or self.segments < 1:
            raise UserInputError(
                f"need stride >= 1, start >= 0, segments >= 1; got {self.stride}, {self.start}, {self.segments}"
            )

    @property
    def keyframes(self) -> list[int]:
        """Clip frames that uniform sampling keeps: ``0, 4, 8, ..., frames - 1``."""
        return keyframe_indices(self.frames).tolist()

    def source_frames(self, segment: int) -> list[int]:
        """Source frame indices used by segment ``segment`` (see the module docstring)."""
        first = self.start + self.stride * segment * self.frames
        return [first + self.stride * i for i in range(self.frames)]

    def to_dict(self) -> dict:
        """Every field plus the derived frame selection, for the JSON report."""
        return {
            **asdict(self),
            "uniform_sampling_keyframes": self.keyframes,
            "frame_selection": (
                f"segment s of each video uses source frames start + stride * (s * frames + i), "
                f"i = 0..frames-1 (here {self.start} + {self.stride} * (s * {self.frames} + i)); "
                "only complete segments are evaluated"
            ),
            "posterior": "mean",
            "fvd_features": None if self.i3d is None else FVD_FEATURES,
        }


@dataclass(frozen=True)
class Segment:
    """One evaluated clip: ``source`` path, segment number, the source frame indices it used,
    and its playback rate ``fps`` (source fps / stride)."""

    source: str
    index: int
    source_frames: tuple[int, ...]
    fps: float
