"""The softmax attention baseline: input checks, and the one place that picks an implementation.

Layout (as `jax.nn.dot_product_attention`): q (B, T, H, D), k and v (B, T, KV, D),
H % KV == 0 (grouped-query attention); self-attention, so keys and queries share T.
Every implementation computes, for each head, softmax(q k^T / sqrt(D) + mask) v with
the causal and padding masks, and returns padded query rows as exact zeros:

    "xla":    jax.nn.dot_product_attention(implementation="xla") with a dense (B, 1, 1, T)
              mask; materialises the (B, H, T, T) scores (quadratic memory). CPU default.
    "cudnn":  cuDNN flash attention (linear memory; GPU, bf16/fp16). cuDNN takes padding
              only as per-row lengths (right padding), so each row's real tokens are first
              moved to the front in order (`real_tokens_first`), attended with
              query/key_value_seq_lengths, and moved back. The order among real tokens
              is kept, so causal attention over them is unchanged: exact for left, right
              or any padding.
    "pallas": JAX's Pallas (Triton) flash attention, `jax.experimental.pallas.ops.gpu.
              attention.mha` (linear memory; any float dtype; interpret=True runs it on
              CPU). Padding through segment ids (1 real, 0 padding: real queries only see
              real keys), the sequence zero-padded to the kernel's block multiple, k/v
              heads repeated for GQA (the kernel needs equal heads).

Scores and softmax statistics are float32 in every path; outputs come back in q's dtype.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, get_args

import jax
import jax.numpy as jnp

from cottention_jax._util import check_qkv
from cottention_jax._util import shape_error as _shape_error

__all__ = [
    "IMPLEMENTATIONS",
    "cudnn_unsupported_reason",
    "default_implementation",
    "real_tokens_first",
    "softmax_attention",
]

SoftmaxImplementation = Literal["xla", "cudnn", "pallas"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(SoftmaxImplementation)

_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_PALLAS_MIN_DIM = 16  # Triton dots need every dimension >= 16
_PALLAS_MAX_BLOCK = 128  # forward block length (sequence) of the Pallas kernel
# the "cudnn" path's kernel (tests run its packing through "xla" on CPU)
_CUDNN_KERNEL: Literal["xla", "cudnn"] = "cudnn"


# ----------------------------------------------------------------------------- choosing a path


def _parse_capability(compute_capability) -> tuple[int, int] | None:
    """ "9.0" -> (9, 0); None or a non-CUDA string (e.g. ROCm's "gfx90a") -> None."""
    try:
        major, minor = str(compute_capability).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, TypeError):
        return None


def cudnn_unsupported_reason(dtype, head_dim: int, compute_capability) -> str | None:
    """Why cuDNN flash attention cannot run (dtype, head dim, GPU), or None when it can.

    The limits of jax's cuDNN path (jax/_src/cudnn/fused_attention_stablehlo.py): an NVIDIA
    GPU of compute capability >= 8.0, bf16 or fp16 inputs, head_dim a multiple of 8 and
    <= 128 (<= 256 from Hopper, 9.0, on).
    """
    cc = _parse_capability(compute_capability)
    if cc is None or cc < (8, 0):
        return f"needs an NVIDIA GPU of compute capability >= 8.0; got {compute_capability!r}"
    if jnp.dtype(dtype) not in _CUDNN_DTYPES:
        return f"needs bfloat16 or float16 q, k and v; got {jnp.dtype(dtype)}"
    max_dim = 256 if cc >= (9, 0) else 128
    if head_dim % 8 or head_dim > max_dim:
        return (
            f"needs head_dim a multiple of 8 and <= {max_dim} on compute capability {compute_capability}; "
            f"got head_dim={head_dim}"
        )
    return None


def _device_capability() -> str | None:
    """Compute capability of JAX's first device ("9.0"), None where it has none (CPU, ROCm)."""
    return getattr(jax.devices()[0], "compute_capability", None)


def default_implementation(
    dtype, head_dim: int, *, backend: str | None = None, compute_capability: str | None = None
) -> SoftmaxImplementation:
    """The fastest implementation that applies: "cudnn" on a GPU where cuDNN supports the dtype
    and head dim, else "pallas" on a GPU, else "xla".

    A pure function of its arguments; backend and compute_capability default to JAX's default
    backend and its first device.
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "gpu":
        return "xla"
    if compute_capability is None:
        compute_capability = _device_capability()
    return "cudnn" if cudnn_unsupported_reason(dtype, head_dim, compute_capability) is None else "pallas"


# ----------------------------------------------------------------------------- checks


def _check_inputs(q, k, v, padding_mask, implementation) -> None:
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or None; got {implementation!r}")
    check_qkv(q, k, v, rank=4, same_value_dim=True, seq_note=" (self-attention)")
    b, t = q.shape[:2]
    if padding_mask is not None:
        if jnp.shape(padding_mask) != (b, t):
            raise _shape_error(f"padding_mask must have shape (batch, seq) = {(b, t)}", padding_mask=padding_mask)
        if jnp.result_type(padding_mask) != jnp.bool_:
            raise ValueError(
                f"padding_mask must be a bool array (True = real token); got dtype {jnp.result_type(padding_mask)}"
            )


def _check_device(impl: str, dtype, head_dim: int, interpret: bool) -> None:
    backend = jax.default_backend()
    if impl == "cudnn":
        if backend != "gpu":
            raise ValueError(
                f"implementation='cudnn' needs a GPU (JAX's backend is {backend!r}); "
                "use 'pallas' with interpret=True or 'xla' on the CPU"
            )
        reason = cudnn_unsupported_reason(dtype, head_dim, _device_capability())
        if reason is not None:
            raise ValueError(f"implementation='cudnn' {reason}; use 'pallas' or 'xla'")
    if impl == "pallas" and not interpret and backend != "gpu":
        raise ValueError(
            f"implementation='pallas' needs a GPU (JAX's backend is {backend!r}); "
            "pass interpret=True to run the kernel on the CPU, or use 'xla'"
        )


# ----------------------------------------------------------------------------- the op


def softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    padding_mask: jax.Array | None = None,
    implementation: SoftmaxImplementation | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Softmax attention, softmax(q k^T / sqrt(D)) v, through a fused kernel where one applies.

    Args:
      q: (B, T, H, D) queries.  k, v: (B, T, KV, D) keys and values; H % KV == 0
        (grouped-query attention: query head n uses kv head n // (H // KV)); one floating dtype.
      causal: causal (decoder) or bidirectional attention.
      padding_mask: optional (B, T) bool, True = real token. Padded keys are ignored and padded
        query rows are exactly zero; left, right or any padding.
      implementation: "xla" (dense scores, quadratic memory), "cudnn" (cuDNN flash; NVIDIA GPU,
        bf16/fp16, see `cudnn_unsupported_reason`) or "pallas" (Triton flash; GPU, or CPU with
        interpret=True); None picks `default_implementation(q.dtype, D)`.
      interpret: pallas only; run the kernel in Pallas interpret mode (CPU).

    Returns:
      (B, T, H, D) in q's dtype.
    """
    _check_inputs(q, k, v, padding_mask, implementation)
    head_dim = q.shape[-1]
    impl = implementation or default_implementation(q.dtype, head_dim)
    _check_device(impl, q.dtype, head_dim, interpret)
    if impl == "xla":
        mask = None if padding_mask is None else padding_mask[:, None, None, :]  # (B, 1, 1, T): keys
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")
    elif impl == "cudnn":
        out = _attend_real_tokens_first(q, k, v, causal, padding_mask, _CUDNN_KERNEL)
    else:
        out = _pallas_flash(q, k, v, causal, padding_mask, interpret)
    if padding_mask is not None:
        out = jnp.where(padding_mask[:, :, None, None], out, 0)
    return out.astype(q.dtype)


# ----------------------------------------------------------------------------- cuDNN: lengths


def real_tokens_first(padding_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The permutation that moves each row's real tokens to the front, in order, and its inverse.

    padding_mask (B, T) bool, True = real. Returns
      order (B, T) int32:   packed[b, j] = x[b, order[b, j]]: real tokens, then padding, each in order;
      inverse (B, T) int32: x[b, t] = packed[b, inverse[b, t]] (where token t lands);
      lengths (B,) int32:   real tokens per row, so packed rows are right-padded to `lengths`.
    """
    real = padding_mask.astype(jnp.int32)
    lengths = jnp.sum(real, axis=1, dtype=jnp.int32)
    rank_real = jnp.cumsum(real, axis=1) - 1  # index among the real tokens
    rank_pad = jnp.cumsum(1 - real, axis=1) - 1  # index among the padding
    inverse = jnp.where(padding_mask, rank_real, lengths[:, None] + rank_pad).astype(jnp.int32)
    order = jnp.argsort(inverse, axis=1).astype(jnp.int32)  # inverse is a permutation
    return order, inverse, lengths


def _take_tokens(x, index):
    """x (B, T, H, D), index (B, T) -> x[b, index[b, t]]."""
    return jnp.take_along_axis(x, index[:, :, None, None], axis=1)


def _attend_real_tokens_first(q, k, v, causal, padding_mask, kernel: Literal["xla", "cudnn"]):
    """Attention with padding given as per-row lengths: pack real tokens first, attend, unpack.

    kernel: "cudnn" (the "cudnn" path); "xla" runs the same packing through XLA (tests, CPU).
    """
    if padding_mask is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=kernel)
    order, inverse, lengths = real_tokens_first(padding_mask)
    packed = jax.nn.dot_product_attention(
        _take_tokens(q, order),
        _take_tokens(k, order),
        _take_tokens(v, order),
        is_causal=causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=kernel,
    )
    return _take_tokens(packed, inverse)


# ----------------------------------------------------------------------------- Pallas: segments


def _pallas_attention_module():
    """jax.experimental.pallas.ops.gpu.attention, imported lazily without its deprecation notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*pallas\.ops\.gpu\.attention is deprecated", category=DeprecationWarning
        )
        from jax.experimental.pallas.ops.gpu import attention  # noqa: PLC0415
    return attention


def _pallas_length(t: int) -> int:
    """Sequence length the kernel runs at: a power of two >= 16 up to one block, then block multiples."""
    if t <= _PALLAS_MAX_BLOCK:
        return max(_PALLAS_MIN_DIM, 1 << (t - 1).bit_length())
    return -(-t // _PALLAS_MAX_BLOCK) * _PALLAS_MAX_BLOCK


def _pallas_block_sizes(module, length: int, dtype):
    """Forward blocks of 128 (64 for 4-byte inputs, whose tiles take twice the shared memory),
    backward blocks of 32 (jax 0.12's default; older releases default to 128); every block
    divides `length`. Passed explicitly, so every supported jax runs the same tiles."""
    fwd = min(length, _PALLAS_MAX_BLOCK if jnp.dtype(dtype).itemsize <= 2 else 64)
    bwd = min(length, 32)
    return module.BlockSizes(
        block_q=fwd, block_k=fwd, block_q_dkv=bwd, block_kv_dkv=bwd, block_q_dq=bwd, block_kv_dq=bwd
    )


def _pallas_flash(q, k, v, causal, padding_mask, interpret):
    module = _pallas_attention_module()
    b, t, h, d = q.shape
    group = h // k.shape[2]
    if group > 1:  # GQA: (B, T, KV, D) -> (B, T, H, D)
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    length, dim = _pallas_length(t), max(d, _PALLAS_MIN_DIM)
    if (length, dim) != (t, d):  # zeros: extra features change no score
        widths = ((0, 0), (0, length - t), (0, 0), (0, dim - d))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
    segment_ids = None  # (B, length): 1 real, 0 padding / tail
    if padding_mask is not None or (length > t and not causal):
        real = jnp.ones((b, t), jnp.int32) if padding_mask is None else padding_mask.astype(jnp.int32)
        segment_ids = jnp.pad(real, ((0, 0), (0, length - t)))
    # (causal without a mask: the tail comes after every real token, so no real query sees it)
    out = module.mha(
        q,
        k,
        v,
        segment_ids,
        sm_scale=1.0 / math.sqrt(d),
        causal=causal,
        block_sizes=_pallas_block_sizes(module, length, q.dtype),
        interpret=interpret,
    )
    return out[:, :t, :, :d]
