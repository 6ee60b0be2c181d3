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

Any model that follows `DecodableModel` decodes here (the models of `cottention_jax.models`
do, and so does a model of one's own built from `cottention_jax.layers`); every entry point
checks it first (`check_decodable`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Protocol, cast, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cottention_jax.models.common import check_ids

__all__ = [
    "DecodableModel",
    "check_decodable",
    "generate",
    "make_decode_loop",
    "make_decode_step",
    "prefill",
    "sample_logits",
]


@runtime_checkable
class DecodableModel(Protocol):
    """What the functions here need of a model: an `nnx.Module` with these two methods.

    The decode state lives in `nnx.Cache` variables of the model (the attention layers of
    `cottention_jax.layers` keep theirs there): decoding splits the model into that state, which
    flows through the jitted loop, and the rest (parameters), closed over as constants.
    Optionally `model.config.vocab_size`: prompt ids, top_k and eos_token_id are then checked
    against it. `generate` calls `model.eval()` (nnx.Module's) first.
    """

    def init_cache(self, batch_size: int, max_length: int) -> None:
        """Create an empty decode state for `batch_size` rows and at most `max_length` tokens in all
        (prompt + generated): e.g. `layer.init_cache((batch_size, max_length, features))` on every
        attention layer. Called before each prompt; a softmax KV cache has max_length slots, a
        cosine state the same size whatever max_length."""

    def __call__(self, tokens: jax.Array, *, padding_mask: jax.Array | None, decode: bool, prefill: bool) -> jax.Array:
        """tokens (B, T) int -> logits (B, T, V) float; logits at t depend only on tokens <= t.

        padding_mask (B, T) bool, True = real token (prompts are left-padded), or None (all real).
        Decoding always calls with decode=True:
          prefill=True: restart the state from these tokens (the prompt, T >= 1);
          prefill=False: continue the state by these tokens (T = 1 in `generate` and
            `make_decode_loop`; a chunk of any T through `make_decode_step`).
        Padded positions must leave the state and the positions of the real tokens unchanged, so
        that the logits at the real positions equal those of the parallel pass (decode=False) over
        the whole sequence.
        """


def _accepts_keywords(fn, names: tuple[str, ...]) -> list[str]:
    """Those of `names` that fn cannot take as keywords ([] when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    named = {
        p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return [name for name in names if name not in named]


def check_decodable(model) -> DecodableModel:
    """`model` itself when it follows `DecodableModel`; else a ValueError naming what it lacks."""
    name = type(model).__name__
    if not isinstance(model, nnx.Module):
        raise ValueError(f"decoding needs a flax.nnx.Module following decoding.DecodableModel; got a {name}")
    init_cache = getattr(model, "init_cache", None)
    if not callable(init_cache):
        raise ValueError(
            f"{name} has no init_cache(batch_size, max_length) method, which decoding needs "
            "to create the decode state (see decoding.DecodableModel)"
        )
    try:
        inspect.signature(init_cache).bind(1, 1)
    except TypeError as err:
        raise ValueError(
            f"{name}.init_cache must take (batch_size, max_length) (see decoding.DecodableModel); "
            f"its signature is {inspect.signature(init_cache)}"
        ) from err
    except ValueError:  # a signature inspect cannot read: leave it to the call
        pass
    if not any("__call__" in vars(cls) for cls in type(model).__mro__):
        raise ValueError(
            f"{name} has no __call__(tokens, *, padding_mask, decode, prefill) method, which "
            "decoding needs (see decoding.DecodableModel)"
        )
    missing = _accepts_keywords(model.__call__, ("padding_mask", "decode", "prefill"))
    if missing:
        raise ValueError(
            f"{name}.__call__ must take the keyword arguments padding_mask, decode and prefill "
            f"(see decoding.DecodableModel); it lacks {', '.join(missing)}"
        )
    return cast(DecodableModel, model)


def _split(model) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, the decode state: the model's nnx.Cache variables, everything else)."""
    graphdef, cache, *rest = nnx.split(model, nnx.Cache, ...)
    return graphdef, cache, rest[0]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    """A Python or NumPy real number (not a bool, not an array)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_sampling(vocab: int | None, temperature, top_k, top_p) -> None:
    if not (_is_real(temperature) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy); got {temperature!r}")
    if top_k is not None and not (_is_int(top_k) and 1 <= top_k <= (vocab or np.inf)):
        raise ValueError(f"top_k must be in [1, vocab={vocab}] (an int) or None; got {top_k!r}")
    if top_p is not None and not (_is_real(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None; got {top_p!r}")


def sample_logits(
    logits: jax.Array,
    key: jax.Array | None,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
    """Next tokens (B,) int32 from logits (B, V).

    temperature == 0: greedy (argmax; top_k and top_p then change nothing). Otherwise sample
    from softmax(logits / temperature), restricted to the top_k most likely tokens when top_k
    is given, then to the nucleus when top_p is given: the most likely tokens whose probability
    (after top_k) first reaches top_p, the most likely one always kept; tokens tied with the
    least likely kept one are kept too. Same order as Hugging Face's samplers.
    """
    _check_sampling(logits.shape[-1], temperature, top_k, top_p)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    scaled = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]  # (B, 1) k-th largest
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if top_p is not None and top_p < 1.0:
        ranked = -jnp.sort(-scaled, axis=-1)  # (B, V) largest first
        probs = jax.nn.softmax(ranked, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
        cutoff = jnp.min(jnp.where(before < top_p, ranked, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


def _check_prompt(prompt, prompt_mask, *, last_must_be_real: bool):
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(
            f"prompt must be an int array of shape (batch, seq); got prompt.shape={prompt.shape}, dtype {prompt.dtype}"
        )
    if prompt_mask is None:
        _refuse_negative_ids(prompt, None)
        return jnp.ones(prompt.shape, bool)
    if prompt_mask.shape != prompt.shape or prompt_mask.dtype != jnp.bool_:
        raise ValueError(
            f"prompt_mask must be a bool array of the prompt's shape {prompt.shape}; got "
            f"prompt_mask.shape={prompt_mask.shape}, dtype {prompt_mask.dtype}"
        )
    if last_must_be_real and not bool(jnp.all(prompt_mask[:, -1])):
        raise ValueError("prompts must be left-padded: prompt_mask[:, -1] must be True for every row")
    _refuse_negative_ids(prompt, prompt_mask)
    return prompt_mask


def _refuse_negative_ids(prompt, prompt_mask) -> None:
    """A negative id is never a token (jnp.take would wrap it to the end of the vocabulary)."""
    if isinstance(prompt, jax.core.Tracer):
        return
    bad = np.asarray(prompt) < 0
    if prompt_mask is not None:
        bad &= np.asarray(prompt_mask)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"prompt must hold token ids >= 0 at its real positions; got "
            f"{int(np.asarray(prompt)[where])} at position {where}"
        )


def _check_token_ids(model, tokens, mask, name: str) -> None:
    """Ids in [0, vocab) at the real positions, checked eagerly (the model itself runs under jit here)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None:
        check_ids(tokens, vocab, name, mask)


def _check_cache_room(cache: nnx.State, new_tokens: int) -> None:
    """Refuse a decode step that would write past a softmax KV cache (a concrete cache only)."""
    layers: dict = {}
    for path, value in nnx.to_flat_state(cache):
        layers.setdefault(tuple(path[:-1]), {})[path[-1]] = value[...]
    for path, arrays in layers.items():
        if "cache_index" not in arrays or isinstance(arrays["cache_index"], jax.core.Tracer):
            continue
        index, length = int(np.asarray(arrays["cache_index"])), arrays["cached_key"].shape[1]
        if index + new_tokens > length:
            where = ".".join(str(p) for p in path) or "the model"
            raise ValueError(
                f"the KV cache of {where} holds {length} positions, {index} of them used: "
                f"{new_tokens} more token(s) do not fit. Prefill with a larger max_length "
                f"(decoding.prefill(model, prompt, max_length=...)) or init_cache with one"
            )


def prefill(
    model: nnx.Module, prompt: jax.Array, prompt_mask: jax.Array | None = None, *, max_length: int | None = None
) -> jax.Array:
    """Reset the model's decode state and run the prompt through it; return the last logits (B, V).

    The prompt may be the first chunk of a longer input (a row may still be all padding).

    prompt (B, P) int, left-padded; max_length bounds prompt + generated tokens
    (it sizes softmax KV caches; cosine states do not depend on it).
    """
    decodable = check_decodable(model)
    prompt_mask = _check_prompt(prompt, prompt_mask, last_must_be_real=False)
    _check_token_ids(model, prompt, prompt_mask, "prompt")
    decodable.init_cache(prompt.shape[0], max_length or prompt.shape[1])
    graphdef, cache, rest = _split(model)
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

    Called eagerly, the step first refuses (ValueError) token ids outside [0, vocab) and a
    chunk that would not fit in a softmax KV cache (one device read of each cache index); under
    a jit of your own those checks cannot run, and an overfull KV cache gives NaN logits.
    """
    check_decodable(model)
    graphdef, cache, rest = _split(model)

    @jax.jit
    def jitted_step(cache, tokens):
        tokens = tokens[:, None] if tokens.ndim == 1 else tokens
        return _cached_call(graphdef, cache, rest, tokens)

    def step(cache, tokens):
        _check_token_ids(model, tokens, None, "tokens")
        _check_cache_room(cache, 1 if tokens.ndim == 1 else tokens.shape[1])
        return jitted_step(cache, tokens)

    step.lower = jitted_step.lower  # type: ignore[attr-defined]  # as a jitted function's: lowering, memory
    return step, cache


def _decode_scan(graphdef, cache, rest, logits, key, *, steps, temperature, top_k, top_p=None, eos_token_id=None):
    """`steps` tokens sampled after `logits`, each fed back through one cached step: (tokens (B, steps),
    cache). The carry is the cache, the last logits and the key (a lax.scan); with eos_token_id
    also which rows are done, in a lax.while_loop that stops once every row has produced it. A
    done row's later tokens are eos_token_id; the key sequence is the scan's, so the tokens up to
    each row's first eos are those it gives without eos_token_id."""
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    if eos_token_id is None:

        def body(carry, _):
            cache, logits, key = carry
            key, sub = jax.random.split(key)
            tokens = sample(logits, sub)
            logits, cache = _cached_call(graphdef, cache, rest, tokens[:, None])
            return (cache, logits, key), tokens

        (cache, _, _), tokens = jax.lax.scan(body, (cache, logits, key), None, length=steps)
        return tokens.T, cache

    def running(carry):
        i, done = carry[0], carry[4]
        return (i < steps) & ~jnp.all(done)

    def step(carry):
        i, cache, logits, key, done, out = carry
        key, sub = jax.random.split(key)
        tokens = jnp.where(done, eos_token_id, sample(logits, sub))
        out = jax.lax.dynamic_update_slice(out, tokens[:, None], (0, i))
        logits, cache = _cached_call(graphdef, cache, rest, tokens[:, None])
        return i + 1, cache, logits, key, done | (tokens == eos_token_id), out

    b = logits.shape[0]
    done, out = jnp.zeros((b,), bool), jnp.full((b, steps), eos_token_id, jnp.int32)
    _, cache, _, _, _, out = jax.lax.while_loop(running, step, (jnp.int32(0), cache, logits, key, done, out))
    return out, cache


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "eos_token_id")
)
def _generate(
    graphdef,
    cache,
    rest,
    prompt,
    prompt_mask,
    key,
    *,
    max_new_tokens,
    temperature,
    top_k,
    top_p=None,
    eos_token_id=None,
):
    logits, cache = _cached_call(graphdef, cache, rest, prompt, prompt_mask, prefill=True)  # (B, V)
    return _decode_scan(
        graphdef,
        cache,
        rest,
        logits,
        key,
        steps=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
    )


def make_decode_loop(
    model: nnx.Module, steps: int, *, temperature: float = 0.0, top_k: int | None = None
) -> tuple[Callable, nnx.State]:
    """A jitted `(cache, logits (B, V), key) -> (tokens (B, steps), cache)` and the current cache.

    Continues the model's decode state by `steps` tokens, the first sampled from `logits`
    (e.g. those `prefill` returned), in one `lax.scan` of single-token steps: what the
    per-token cost of decoding is measured on. Each token is fed back through the cache, so a
    softmax KV cache needs room for `steps` more tokens: checked (ValueError) when the loop is
    made and when it is called eagerly.
    """
    if not (_is_int(steps) and steps >= 1):
        raise ValueError(f"steps must be >= 1 (an int); got {steps!r}")
    check_decodable(model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    _check_sampling(vocab, temperature, top_k, None)
    graphdef, cache, rest = _split(model)
    _check_cache_room(cache, steps)  # each of the `steps` tokens is fed back through the cache

    @jax.jit
    def jitted_loop(cache, logits, key):
        return _decode_scan(
            graphdef, cache, rest, logits, key, steps=int(steps), temperature=float(temperature), top_k=top_k
        )

    def loop(cache, logits, key):
        _check_cache_room(cache, steps)
        return jitted_loop(cache, logits, key)

    loop.lower = jitted_loop.lower  # type: ignore[attr-defined]  # as a jitted function's: lowering, memory
    return loop, cache


def generate(
    model: nnx.Module,
    prompt: jax.Array,
    *,
    prompt_mask: jax.Array | None = None,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
) -> jax.Array:
    """Generate max_new_tokens tokens after each (left-padded) prompt: (B, max_new_tokens) int32.

    Greedy when temperature == 0, else sampling with the given PRNG key, optionally restricted
    to the top_k tokens and/or the top_p nucleus (`sample_logits`). With eos_token_id, a row is
    done once it produces that token: its later positions hold eos_token_id, and decoding stops
    when every row is done. Puts the model in eval mode; on return the model's cache holds the
    state after the prompt and the tokens fed back (those of done rows included).
    """
    decodable = check_decodable(model)
    prompt_mask = _check_prompt(prompt, prompt_mask, last_must_be_real=True)
    _check_token_ids(model, prompt, prompt_mask, "prompt")
    if not (_is_int(max_new_tokens) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be >= 1 (an int); got {max_new_tokens!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    _check_sampling(vocab, temperature, top_k, top_p)
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    if eos_token_id is not None and not (_is_int(eos_token_id) and 0 <= eos_token_id < (vocab or np.inf)):
        raise ValueError(f"eos_token_id must be a token id in [0, vocab={vocab}) or None; got {eos_token_id!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    model.eval()
    decodable.init_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens)
    graphdef, cache, rest = _split(model)
    tokens, cache = _generate(
        graphdef,
        cache,
        rest,
        prompt,
        prompt_mask,
        key,
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=top_k,
        top_p=None if top_p is None else float(top_p),
        eos_token_id=None if eos_token_id is None else int(eos_token_id),
    )
    nnx.update(model, cache)
    return tokens
