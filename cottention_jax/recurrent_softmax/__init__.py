"""Softmax attention as an RNN (arXiv 2507.23632): Taylor truncations, denominator ablations,
linear-attention baselines. Functional ops in jax + jnp; every choice is an explicit field of
`AttentionVariant`, and `VARIANTS` names the ones the models switch between.

Layout: q (B, T, H, D), k (B, T, KV, D), v (B, T, KV, Dv), H % KV == 0 (query head h reads
kv head h // (H // KV)); padding_mask (B, T) bool, True = real token. Attention is causal.
Kernels, sums and states are float32 whatever the input dtype; outputs come in q's dtype.

The maths, per head. Score s_ti = scale * q_t . k_i, scale = 1/sqrt(D) unless given;
with a clamp c, s_ti <- min(s_ti, c) (parallel form only). Kernel kappa_ti:
    taylor, order N:   sum_{n=0..N} s_ti^n / n!          (exp(s) truncated)
    exp:               exp(s_ti)                          (unshifted; parallel form only)
    elu+1, relu, cosine: scale * phi(q_t) . phi(k_i), scale = 1 unless given,
                       phi(x) = elu(x) + 1 | relu(x) | x / max(|x|, eps)
Over real tokens i <= t (n_t of them, plus the count of an initial state):
    num_t = sum_i kappa_ti v_i        den_t = sum_i kappa_ti
Output o_t, by denominator:
    true       num_t / g(den_t),  g(x) = sign(x) max(|x|, eps), sign(0) = +1
    detached   num_t / stop_gradient(g(den_t))
    none       num_t
    position   num_t / max(n_t, 1)
    l2         num_t / max(|num_t|_2, eps)
    rms        num_t / sqrt(mean(num_t^2) + eps)
    layernorm  (num_t - mean(num_t)) / sqrt(var(num_t) + eps)
then o_t <- o_t * sigmoid(gate_t) for gated variants, and o_t = 0 on padded rows.
Even Taylor orders give kappa > 0; odd orders (1, 3) can give kappa < 0 and den_t can cross
zero: g keeps the sign and floors |den| at eps (the output may then be large, but finite).

RNN form. With (q.k)^n = <q^{(x)n}, k^{(x)n}>, kappa = phi_q(q) . phi_k(k) where phi_k stacks
the tensor powers k^{(x)n}, n = 0..N, and phi_q the matching q^{(x)n} times scale^n / n!.
Per kv head the state after position t is
    S_t = S_{t-1} + phi_k(k_t) v_t^T  (F x Dv),   z_t = z_{t-1} + phi_k(k_t)  (F),
    num_t = phi_q(q_t)^T S_t,   den_t = phi_q(q_t) . z_t,
the paper's S^n_t and z^n_t stacked over n. F = sum_n D^n ("full" layout), or
sum_n C(D+n-1, n) ("symmetric", the default: each distinct monomial of k^{(x)n} once,
the same inner products).

Memory of the state, per batch row and kv head, F * (Dv + 1) float32:
    D = 64, Dv = 64, N = 2:  F = 2145 symmetric (0.56 MB)  /  4161 full (1.08 MB)
    D = 64, Dv = 64, N = 3:  F = 47905 symmetric (12.5 MB) /  266305 full (69 MB);
      the order-3 term alone is D^3 x Dv = 262144 x 64 floats (67 MB) in the full layout.
The recurrent form's backward pass keeps one state per chunk, (T / C) times that, so N = 3
(e.g. T = 1024, C = 64: 200 MB symmetric per batch row and kv head) is linear in T but
rarely practical; N <= 2 is. The parallel form needs no state and takes any N (and exp).

The original PyTorch code (GPT_Trainer/LlamaDecoderLayer.py of the paper's repository)
uses scale 1/sqrt(D); clamps q.k/sqrt(D) at 5 before exp in most of its exp variants
(not in plain softmax, the 80-term Taylor run, or its two variants with an output gate
and no norm); floors clamped and detached denominators at 1 (eps = 1.0 here); applies
its norms with learned parameters (a layer can add a gain after these).

Entry points: `attention(variant, q, k, v, ...)` for a whole sequence (form "parallel" or
"recurrent"), `attention_step(variant, state, q_t, k_t, v_t)` for decoding, `init_state`.
"""

from cottention_jax.recurrent_softmax.api import (
    FORMS,
    attention,
    attention_step,
    init_state,
    state_size,
)
from cottention_jax.recurrent_softmax.denominators import safe_denominator
from cottention_jax.recurrent_softmax.features import feature_dim, taylor_exp
from cottention_jax.recurrent_softmax.forms import RecurrentSoftmaxState
from cottention_jax.recurrent_softmax.variants import (
    DENOMINATORS,
    FEATURES,
    STATE_LAYOUTS,
    VARIANTS,
    AttentionVariant,
    resolve_variant,
)

__all__ = [
    "DENOMINATORS",
    "FEATURES",
    "FORMS",
    "STATE_LAYOUTS",
    "VARIANTS",
    "AttentionVariant",
    "RecurrentSoftmaxState",
    "attention",
    "attention_step",
    "feature_dim",
    "init_state",
    "resolve_variant",
    "safe_denominator",
    "state_size",
    "taylor_exp",
]
