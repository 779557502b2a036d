"""tam_jax: EfficientTAM (Efficient Track Anything) in JAX / Flax Linen.

Entry points:
    tam_jax.configs.get_config(name)            the 8 released variants + tiny test variants
    tam_jax.build_image_predictor(variant, ck)  SAM-style image segmentation
    tam_jax.models.tam.EfficientTAM             the Linen model
"""

from tam_jax.configs import RELEASED_VARIANTS, get_config

__all__ = ["RELEASED_VARIANTS", "build_image_predictor", "get_config"]


def build_image_predictor(variant, checkpoint=None, **config_overrides):
    """See `tam_jax.predictors.build_image_predictor` (imported lazily: it pulls in jax)."""
    from tam_jax.predictors import build_image_predictor as build

    return build(variant, checkpoint, **config_overrides)
