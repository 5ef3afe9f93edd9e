"""diffusers integration. CV-VAE is a drop-in ``vae`` for image pipelines (it decodes 4-D image
latents in image mode); :class:`CVVAEVideoPipeline` is an SVD-style image-to-video pipeline that
decodes ``k + 1`` latent frames to ``1 + 4k`` video frames."""

from cvvae.pipelines.video import CVVAEVideoPipeline, CVVAEVideoPipelineOutput

__all__ = ["CVVAEVideoPipeline", "CVVAEVideoPipelineOutput"]
