"""CV-VAE inside diffusers pipelines, end to end with tiny random components (nothing downloaded):
as the vae of StableDiffusionPipeline, and in the SVD-style CVVAEVideoPipeline."""

import json
import string
from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from cvvae import CVVAE, InferencePlan
from cvvae.pipelines import CVVAEVideoPipeline


@pytest.fixture(scope="module")
def vae(reference_dir) -> CVVAE:
    return CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny")


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer from a vocab.json and merges.txt written here: letters, word-final
    letters, two merges, the two special tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase)]:
        vocab[token] = len(vocab)
    vocab["ca"], vocab["cat</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=16
    )


def _sd_pipeline(vae: CVVAE, folder: Path) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    tokenizer = _tokenizer(folder)
    ids = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "a</w>", "cat</w>", "<|endoftext|>"])
    assert tokenizer("a cat").input_ids == ids  # the BPE merges are applied
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def test_stable_diffusion_pipeline_decodes_through_cvvae_in_image_mode(vae, tmp_path):
    pipe = _sd_pipeline(vae, tmp_path)
    assert pipe.vae_scale_factor == 8
    decoded = []
    original_decode = vae.decode

    def recording_decode(z, *args, **kw):
        decoded.append(z.clone())
        return original_decode(z, *args, **kw)

    vae.decode = recording_decode
    try:
        out = pipe(
            "a cat",
            height=48,
            width=64,
            num_inference_steps=2,
            guidance_scale=2.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )
    finally:
        del vae.decode
    assert out.images.shape == (1, 3, 48, 64)
    (z,) = decoded
    assert z.shape == (1, 4, 6, 8)  # 4-D image latents, divided by the scaling factor
    latents = pipe(
        "a cat",
        height=48,
        width=64,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images
    assert torch.allclose(z, latents / vae.config.scaling_factor)
    expected = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(out.images, expected, atol=1e-6)


def _video_pipeline(vae: CVVAE) -> CVVAEVideoPipeline:
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )
    )
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        num_frames=5,
    )
    scheduler = EulerDiscreteScheduler(
        prediction_type="v_prediction",
        use_karras_sigmas=True,
        timestep_type="continuous",
        sigma_min=0.002,
        sigma_max=700.0,
    )
    return CVVAEVideoPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler)


def test_video_pipeline_decodes_k_plus_1_latents_to_1_plus_4k_frames(vae):
    pipe = _video_pipeline(vae)
    image = torch.rand(1, 3, 40, 48) * 2 - 1
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))

    def run(output_type: str):
        generator = torch.Generator().manual_seed(3)
        return pipe(
            image,
            num_frames=13,
            num_inference_steps=2,
            max_guidance_scale=2.5,
            generator=generator,
            output_type=output_type,
        ).frames

    latents = run("latent")
    assert latents.shape == (1, 4, 4, 5, 6)  # k + 1 = 4 latent frames, CV-VAE layout
    # the UNet saw frames first, noisy latents + image latent on channels, doubled for guidance
    assert seen == [(2, 4, 8, 5, 6)] * 2
    frames = run("pt")
    assert frames.shape == (1, 13, 3, 40, 48)  # 1 + 4k = 13 frames
    video = vae.decode(vae.unscale_latents(latents), num_frames=13, height=40, width=48).sample
    expected = (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    assert torch.allclose(frames, expected, atol=1e-6)


def test_img2img_from_pipe_with_cvvae(vae, tmp_path):
    """``StableDiffusionImg2ImgPipeline.from_pipe(pipe, vae=pipe.vae)`` reuses the CV-VAE
    (diffusers carries a model over by itself only when its type is the new pipeline's type
    hint, ``AutoencoderKL``; docs/diffusers.md); img2img encodes the image through it (image
    mode) and decodes the result."""
    from diffusers import StableDiffusionImg2ImgPipeline

    text_to_image = _sd_pipeline(vae, tmp_path)
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(text_to_image, vae=text_to_image.vae)
    assert pipe.vae is vae and pipe.unet is text_to_image.unet
    encoded = []
    original_encode = vae.encode

    def recording_encode(x, *args, **kw):
        encoded.append(x.shape)
        return original_encode(x, *args, **kw)

    vae.encode = recording_encode
    try:
        out = pipe(
            "a cat",
            image=torch.rand(1, 3, 48, 64),
            strength=0.5,
            num_inference_steps=2,
            guidance_scale=2.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )
    finally:
        del vae.encode
    assert encoded == [(1, 3, 48, 64)]
    assert out.images.shape == (1, 3, 48, 64) and torch.isfinite(out.images).all()


def test_pipeline_with_cvvae_saves_and_reloads_in_bfloat16(vae, tmp_path):
    pipe = _sd_pipeline(vae, tmp_path)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vae"][1] == "CVVAE"
    reloaded = StableDiffusionPipeline.from_pretrained(
        tmp_path / "pipe", torch_dtype=torch.bfloat16
    )
    assert isinstance(reloaded.vae, CVVAE) and reloaded.vae.dtype == torch.bfloat16
    for key, value in vae.state_dict().items():
        assert torch.equal(reloaded.vae.state_dict()[key], value.to(torch.bfloat16)), key
    out = reloaded(
        "a cat",
        height=48,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    assert out.images.shape == (1, 3, 48, 64) and torch.isfinite(out.images).all()


def test_video_pipeline_takes_what_svd_users_pass(vae):
    """A PIL image, ``height``/``width``, ``num_videos_per_prompt``, ``decode_chunk_size`` and
    ``callback_on_step_end``, as ``StableVideoDiffusionPipeline`` takes them; a chunked decode
    leaves the VAE's own tiling settings as they were."""
    from PIL import Image

    pipe = _video_pipeline(vae)
    image = Image.fromarray((torch.rand(30, 50, 3) * 255).to(torch.uint8).numpy())
    steps = []

    def callback(p, step, timestep, kwargs):
        steps.append(step)
        return {"latents": kwargs["latents"]}

    def run(**kw):
        return pipe(
            image,
            height=40,
            width=48,
            num_frames=9,
            num_inference_steps=1,
            num_videos_per_prompt=2,
            generator=torch.Generator().manual_seed(3),
            callback_on_step_end=callback,
            **kw,
        ).frames

    latents = run(output_type="latent")
    assert latents.shape == (2, 4, 3, 5, 6) and steps == [0]
    chunked = run(output_type="pt", decode_chunk_size=1)
    assert chunked.shape == (2, 9, 3, 40, 48) and not vae.use_tiling
    vae.enable_tiling(plan=InferencePlan(decode_latents=1))
    try:
        video = vae.decode(vae.unscale_latents(latents), num_frames=9).sample
    finally:
        vae.disable_tiling()
    expected = (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    assert torch.allclose(chunked, expected, atol=1e-6)
