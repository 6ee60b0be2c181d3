"""Attention kernels for JAX. This tier imports jax only (never flax, optax or cottention_jax)."""
