"""GPT-J and BERT forward passes in float64 NumPy, written from transformers' architectures and read
straight from their state dicts (PyTorch names and layouts): the independent reference of the
converter tests. Softmax attention as transformers computes it, or cosine attention as the
specification says (tests/_numpy_cosine.py) with `norm_const` as the raw stabilizer.
"""

from __future__ import annotations

import math

import numpy as np

from tests._numpy_cosine import cosine_attention_np

_erf = np.vectorize(math.erf)
ACTIVATIONS = {
    "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
}


def _f64(state):
    return {k: np.asarray(v, np.float64) for k, v in state.items()}


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * weight + bias


def _softmax_attention(q, k, v, allowed):
    """q, k, v (B, T, H, D); allowed (B, T, S) bool; rows with no allowed key average every key
    (transformers fills masked scores with a large negative number)."""
    scores = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    scores = np.where(allowed[:, None], scores, -1e30)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", weights, v)


def _gptj_rotary(x, positions, rotary_dim):
    """GPT-J's rotary embedding: pairs (x0, x1), (x2, x3), ... of the first rotary_dim features rotated
    by position * 10000^(-2i / rotary_dim)."""
    inv_freq = 1.0 / 10000 ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    angle = positions[..., None].astype(np.float64) * inv_freq  # (B, T, R/2)
    sin, cos = np.sin(angle)[:, :, None], np.cos(angle)[:, :, None]
    even, odd = x[..., :rotary_dim:2], x[..., 1:rotary_dim:2]
    rotated = np.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1).reshape(x[..., :rotary_dim].shape)
    return np.concatenate([rotated, x[..., rotary_dim:]], axis=-1)


def gptj_logits(state, config: dict, tokens, mask, positions, *, attention: str) -> np.ndarray:
    """(B, T, vocab) logits of a GPTJForCausalLM state dict; attention "softmax" or "cosine"."""
    s = _f64(state)
    b, t = tokens.shape
    heads, eps = config["n_head"], config["layer_norm_epsilon"]
    act = ACTIVATIONS[config.get("activation_function", "gelu_new")]
    x = s["transformer.wte.weight"][tokens]
    allowed = np.tri(t, dtype=bool)[None] & mask[:, None, :]
    for i in range(config["n_layer"]):
        p = f"transformer.h.{i}."
        h = _layer_norm(x, s[p + "ln_1.weight"], s[p + "ln_1.bias"], eps)
        q, k, v = ((h @ s[p + f"attn.{n}_proj.weight"].T).reshape(b, t, heads, -1) for n in "qkv")
        q, k = (_gptj_rotary(a, positions, config["rotary_dim"]) for a in (q, k))
        if attention == "cosine":
            o = cosine_attention_np(
                q, k, v, s[p + "attn.norm_const"].reshape(-1), causal=True, query_real=mask, key_real=mask
            )
        else:
            o = _softmax_attention(q, k, v, allowed)
        attn = o.reshape(b, t, -1) @ s[p + "attn.out_proj.weight"].T
        mlp = (
            act(h @ s[p + "mlp.fc_in.weight"].T + s[p + "mlp.fc_in.bias"]) @ s[p + "mlp.fc_out.weight"].T
            + s[p + "mlp.fc_out.bias"]
        )
        x = x + attn + mlp
    x = _layer_norm(x, s["transformer.ln_f.weight"], s["transformer.ln_f.bias"], eps)
    return x @ s["lm_head.weight"].T + s["lm_head.bias"]


def bert_outputs(state, config: dict, tokens, segments, mask, *, attention: str) -> dict[str, np.ndarray]:
    """{"mlm": (B, T, vocab), "classes": (B, labels)} of a BERT state dict (the heads it has)."""
    s = _f64(state)
    b, t = tokens.shape
    heads, eps = config["num_attention_heads"], config["layer_norm_eps"]
    act = ACTIVATIONS[config["hidden_act"]]
    e = "bert.embeddings."
    x = (
        s[e + "word_embeddings.weight"][tokens]
        + s[e + "position_embeddings.weight"][np.arange(t)][None]
        + s[e + "token_type_embeddings.weight"][segments]
    )
    x = _layer_norm(x, s[e + "LayerNorm.weight"], s[e + "LayerNorm.bias"], eps)
    allowed = np.broadcast_to(mask[:, None, :], (b, t, t))
    for i in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        q, k, v = (
            (x @ s[p + f"attention.self.{n}.weight"].T + s[p + f"attention.self.{n}.bias"]).reshape(b, t, heads, -1)
            for n in ("query", "key", "value")
        )
        if attention == "cosine":
            o = cosine_attention_np(
                q, k, v, s[p + "attention.self.norm_const"].reshape(-1), causal=False, query_real=mask, key_real=mask
            )
        else:
            o = _softmax_attention(q, k, v, allowed)
        attn = o.reshape(b, t, -1) @ s[p + "attention.output.dense.weight"].T + s[p + "attention.output.dense.bias"]
        x = _layer_norm(
            x + attn, s[p + "attention.output.LayerNorm.weight"], s[p + "attention.output.LayerNorm.bias"], eps
        )
        inner = act(x @ s[p + "intermediate.dense.weight"].T + s[p + "intermediate.dense.bias"])
        x = _layer_norm(
            x + inner @ s[p + "output.dense.weight"].T + s[p + "output.dense.bias"],
            s[p + "output.LayerNorm.weight"],
            s[p + "output.LayerNorm.bias"],
            eps,
        )
    out = {}
    if "cls.predictions.bias" in s:
        c = "cls.predictions.transform."
        h = _layer_norm(
            act(x @ s[c + "dense.weight"].T + s[c + "dense.bias"]),
            s[c + "LayerNorm.weight"],
            s[c + "LayerNorm.bias"],
            eps,
        )
        out["mlm"] = h @ s[e + "word_embeddings.weight"].T + s["cls.predictions.bias"]
    if "classifier.weight" in s:
        pooled = np.tanh(x[:, 0] @ s["bert.pooler.dense.weight"].T + s["bert.pooler.dense.bias"])
        out["classes"] = pooled @ s["classifier.weight"].T + s["classifier.bias"]
    return out
