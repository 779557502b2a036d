"""tam_jax: EfficientTAM (Efficient Track Anything) in JAX / Flax Linen.

Entry points:
    tam_jax.configs.get_config(name)            the 8 released variants + tiny test variants
    tam_jax.build_image_predictor(variant, ck)  SAM-style image segmentation
    tam_jax.build_video_predictor(variant, ck)  video tracking (official predictor API)
    tam_jax.models.tam.EfficientTAM             the Linen model
"""

from tam_jax.configs import RELEASED_VARIANTS, get_config

__all__ = ["RELEASED_VARIANTS", "build_image_predictor", "build_video_predictor", "get_config"]


def build_image_predictor(variant, checkpoint=None, **config_overrides):
    """See `tam_jax.predictors.build_image_predictor` (imported lazily: it pulls in jax)."""
    from tam_jax.predictors import build_image_predictor as build

    return build(variant, checkpoint, **config_overrides)


def build_video_predictor(variant, checkpoint=None, **kwargs):
    """See `tam_jax.video_predictor.build_video_predictor` (imported lazily)."""
    from tam_jax.video_predictor import build_video_predictor as build

    return build(variant, checkpoint, **kwargs)
