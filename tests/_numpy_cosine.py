"""Cosine attention in float64 NumPy, written from the specification (shared/DESIGN.md, section 2),
independently of the package: the reference of the layer, adapter and converter tests.

q (B, T, H, Dk), k (B, S, KV, Dk), v (B, S, KV, Dv), m (H,) raw stabilizer; query_real (B, T) and
key_real (B, S) bool (None: all real). Causal needs T == S: counts n_i = real keys at <= i;
bidirectional: n = real keys of the row. "value" mode scales v_i by max(n_i, 1)^-p, p = sigmoid(m);
"query" mode scales output row t by max(n_t, 1)^-p. Padded queries output zero.
"""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_attention_np(
    q, k, v, m, *, causal: bool, query_real=None, key_real=None, stabilize: str = "value"
) -> np.ndarray:
    q, k, v, m = (np.asarray(x, np.float64) for x in (q, k, v, m))
    (b, t, h, _), s = q.shape, k.shape[1]
    group = h // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    qr = np.ones((b, t), bool) if query_real is None else np.asarray(query_real, bool)
    kr = np.ones((b, s), bool) if key_real is None else np.asarray(key_real, bool)
    qn, kn, vz = unit(q) * qr[..., None, None], unit(k) * kr[..., None, None], v * kr[..., None, None]
    p = 1.0 / (1.0 + np.exp(-m))
    counts = np.cumsum(kr, axis=1) if causal else np.broadcast_to(kr.sum(axis=1, keepdims=True), (b, s))
    factor = np.maximum(counts, 1)[:, :, None].astype(np.float64) ** -p[None, None, :]  # (B, S, H)
    scores = np.einsum("bthd,bshd->bhts", qn, kn)
    if causal:
        scores = scores * np.tri(t, s)[None, None]
    if stabilize == "value":
        return np.einsum("bhts,bshd->bthd", scores, vz * factor[..., None])
    out = np.einsum("bhts,bshd->bthd", scores, vz)
    row_counts = np.cumsum(kr, axis=1)[:, :t] if causal else counts[:, :1]
    return out * (np.maximum(row_counts, 1)[:, :, None] ** -p[None, None, :])[..., None]
