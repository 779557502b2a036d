"""tam_jax: EfficientTAM in JAX/Flax."""
