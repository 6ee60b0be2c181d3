"""Autoregressive decoding as a mode of the trained model.

1. prefill: the prompt runs through the parallel form once (`decode=True,
   prefill=True`: cosine's chunked scan, softmax's flash attention over the prompt
   alone), which leaves each layer's state in its cache: for cosine attention a d x d
   matrix per head and a token count, for softmax attention a key/value cache.
2. generate: `jax.lax.scan` over single-token steps whose carry is only that
   cache state (plus the last logits and the PRNG key). With cosine attention the
   carry has the same size at every step: memory does not grow with the number
   of generated tokens.

The model is split with `nnx.split(model, nnx.Cache, ...)` so the parameters are
closed over as constants and only the cache flows through the scan. Prompts of
different lengths are left-padded with `prompt_mask` False on the padding.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["generate", "make_decode_loop", "make_decode_step", "prefill", "sample_logits"]


def sample_logits(logits: jax.Array, key: jax.Array | None, *, temperature: float = 0.0,
                  top_k: int | None = None) -> jax.Array:
    """Next tokens (B,) int32 from logits (B, V).

    temperature == 0: greedy (argmax). Otherwise sample from softmax(logits / temperature),
    restricted to the top_k most likely tokens when top_k is given.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    scaled = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        if not 0 < top_k <= logits.shape[-1]:
            raise ValueError(f"top_k must be in [1, vocab={logits.shape[-1]}]; got {top_k}")
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]                 # (B, 1) k-th largest
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


def _check_prompt(prompt, prompt_mask, *, last_must_be_real: bool):
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be an int array of shape (batch, seq); got prompt.shape={prompt.shape}, "
                         f"dtype {prompt.dtype}")
    if prompt_mask is None:
        return jnp.ones(prompt.shape, bool)
    if prompt_mask.shape != prompt.shape or prompt_mask.dtype != jnp.bool_:
        raise ValueError(f"prompt_mask must be a bool array of the prompt's shape {prompt.shape}; got "
                         f"prompt_mask.shape={prompt_mask.shape}, dtype {prompt_mask.dtype}")
    if last_must_be_real and not bool(jnp.all(prompt_mask[:, -1])):
        raise ValueError("prompts must be left-padded: prompt_mask[:, -1] must be True for every row")
    return prompt_mask


def prefill(model: nnx.Module, prompt: jax.Array, prompt_mask: jax.Array | None = None, *,
            max_length: int | None = None) -> jax.Array:
    """Reset the model's decode state and run the prompt through it; return the last logits (B, V).

    The prompt may be the first chunk of a longer input (a row may still be all padding).

    prompt (B, P) int, left-padded; max_length bounds prompt + generated tokens
    (it sizes softmax KV caches; cosine states do not depend on it).
    """
    prompt_mask = _check_prompt(prompt, prompt_mask, last_must_be_real=False)
    model.init_cache(prompt.shape[0], max_length or prompt.shape[1])
    graphdef, cache, rest = nnx.split(model, nnx.Cache, ...)
    logits, cache = _jitted_cached_call(graphdef, cache, rest, prompt, prompt_mask, prefill=True)
    nnx.update(model, cache)
    return logits


def _cached_call(graphdef, cache, rest, tokens, padding_mask=None, prefill=False):
    """One decode-mode call of the model rebuilt from its parts: (last logits (B, V), new cache).

    prefill: the cache restarts from `tokens` (the parallel form over them alone).
    """
    model = nnx.merge(graphdef, cache, rest)
    logits = model(tokens, padding_mask=padding_mask, decode=True, prefill=prefill)[:, -1]
    return logits, nnx.state(model, nnx.Cache)


_jitted_cached_call = jax.jit(_cached_call, static_argnames=("graphdef", "prefill"))


def make_decode_step(model: nnx.Module) -> tuple[Callable, nnx.State]:
    """A jitted step `(cache, tokens) -> (last logits (B, V), cache)` and the current cache.

    tokens: (B,) for one new token per row, or (B, T) for a chunk (e.g. a long prompt
    prefilled piece by piece). Call after `prefill` or `model.init_cache`. The step
    closes over the parameters; only the cache goes in and out.
    """
    graphdef, cache, rest = nnx.split(model, nnx.Cache, ...)

    @jax.jit
    def step(cache, tokens):
        tokens = tokens[:, None] if tokens.ndim == 1 else tokens
        return _cached_call(graphdef, cache, rest, tokens)

    return step, cache


def _decode_scan(graphdef, cache, rest, logits, key, *, steps, temperature, top_k):
    """`steps` tokens sampled after `logits`, each fed back through one cached step (a lax.scan
    whose carry is the cache, the last logits and the key): (tokens (B, steps), cache)."""

    def body(carry, _):
        cache, logits, key = carry
        key, sub = jax.random.split(key)
        tokens = sample_logits(logits, sub, temperature=temperature, top_k=top_k)
        logits, cache = _cached_call(graphdef, cache, rest, tokens[:, None])
        return (cache, logits, key), tokens

    (cache, _, _), tokens = jax.lax.scan(body, (cache, logits, key), None, length=steps)
    return tokens.T, cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))
def _generate(graphdef, cache, rest, prompt, prompt_mask, key, *, max_new_tokens, temperature, top_k):
    logits, cache = _cached_call(graphdef, cache, rest, prompt, prompt_mask, prefill=True)   # (B, V)
    return _decode_scan(graphdef, cache, rest, logits, key, steps=max_new_tokens, temperature=temperature,
                        top_k=top_k)


def make_decode_loop(model: nnx.Module, steps: int, *, temperature: float = 0.0,
                     top_k: int | None = None) -> tuple[Callable, nnx.State]:
    """A jitted `(cache, logits (B, V), key) -> (tokens (B, steps), cache)` and the current cache.

    Continues the model's decode state by `steps` tokens, the first sampled from `logits`
    (e.g. those `prefill` returned), in one `lax.scan` of single-token steps: what the
    per-token cost of decoding is measured on.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    graphdef, cache, rest = nnx.split(model, nnx.Cache, ...)

    @jax.jit
    def loop(cache, logits, key):
        return _decode_scan(graphdef, cache, rest, logits, key, steps=steps, temperature=float(temperature),
                            top_k=top_k)

    return loop, cache


def generate(model: nnx.Module, prompt: jax.Array, *, prompt_mask: jax.Array | None = None,
             max_new_tokens: int, key: jax.Array | None = None, temperature: float = 0.0,
             top_k: int | None = None) -> jax.Array:
    """Generate max_new_tokens tokens after each (left-padded) prompt: (B, max_new_tokens) int32.

    Greedy when temperature == 0, else sampling (optionally top-k) with the given
    PRNG key. Puts the model in eval mode; on return the model's cache holds the
    state after the prompt and the generated tokens.
    """
    prompt_mask = _check_prompt(prompt, prompt_mask, last_must_be_real=True)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    key = jax.random.PRNGKey(0) if key is None else key
    model.eval()
    model.init_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens)
    graphdef, cache, rest = nnx.split(model, nnx.Cache, ...)
    tokens, cache = _generate(graphdef, cache, rest, prompt, prompt_mask, key,
                              max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k)
    nnx.update(model, cache)
    return tokens
