"""Attention variants: one frozen dataclass holds every ablation choice, and a named registry.

The maths each field selects is stated in the package docstring
(`cottention_jax.recurrent_softmax`). Derive new variants with
`dataclasses.replace(VARIANTS["taylor2"], denominator="rms")`, never by copying.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "DENOMINATORS",
    "FEATURES",
    "STATE_LAYOUTS",
    "VARIANTS",
    "AttentionVariant",
    "resolve_variant",
]

# "taylor": the order-N truncation of exp; "exp": exp itself (parallel form only);
# the rest are linear-attention feature maps phi, kernel scale * phi(q) . phi(k).
FEATURES = ("taylor", "exp", "elu+1", "relu", "cosine")
LINEAR_FEATURES = ("elu+1", "relu", "cosine")
DENOMINATORS = ("true", "none", "position", "l2", "rms", "layernorm", "detached")
# How the recurrent state stores k^{(x)n}: "symmetric" keeps the C(D+n-1, n) distinct
# monomials of the n-fold tensor power (weights on the query side make the inner product
# exact); "full" keeps all D^n entries, literally the paper's state.
STATE_LAYOUTS = ("symmetric", "full")


@dataclasses.dataclass(frozen=True)
class AttentionVariant:
    """Every choice of one causal attention variant, explicit.

    Attributes:
      feature: "taylor" (kernel sum_{n<=order} s^n / n!), "exp" (exp(s)), or a linear
        feature map "elu+1" / "relu" / "cosine" (kernel scale * phi(q) . phi(k)), with
        s = scale * q . k.
      order: the Taylor order N >= 0 for feature "taylor"; must be None otherwise.
      denominator: "true" (divide by the sum of kernel weights), "detached" (the same,
        with the divisor under stop_gradient), "none", "position" (divide by the number
        of real tokens so far), "l2" / "rms" / "layernorm" (normalise the numerator over
        Dv, no learned parameters).
      gate: True if the variant multiplies the output by sigmoid(gate), with the gate
        (B, T, H, Dv) or (B, T, H, 1) computed by the layer; the layer then needs a
        gate projection.
      scale: multiplies q . k (taylor, exp) or phi(q) . phi(k) (feature maps);
        None means 1/sqrt(head_dim) for taylor and exp (as softmax attention) and 1
        for the feature maps.
      clamp: optional upper bound c on s before the series or exp, s <- min(s, c)
        (the original PyTorch code uses c = 5 on q.k/sqrt(d) in most of its exp
        variants). A clamp has no tensor-power state, so it needs the parallel form.
        Only for "taylor" and "exp".
      eps: the guard of each denominator: "true"/"detached" divide by
        sign(den) * max(|den|, eps) with sign(0) = +1 (odd Taylor orders can make
        den cross zero; eps = 1 reproduces the original code's clamp(min=1) for a
        positive den); "l2" divides by max(|num|, eps); "rms"/"layernorm" add eps
        to the mean square / variance; "cosine" normalises by max(|x|, eps).
      state_layout: "symmetric" or "full" storage of the order-n Taylor states
        (the recurrent form and decoding; see `feature_dim`).
    """

    feature: str = "taylor"
    order: int | None = 2
    denominator: str = "true"
    gate: bool = False
    scale: float | None = None
    clamp: float | None = None
    eps: float = 1e-6
    state_layout: str = "symmetric"

    def __post_init__(self):
        if self.feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}; got {self.feature!r}")
        if self.denominator not in DENOMINATORS:
            raise ValueError(f"denominator must be one of {DENOMINATORS}; got {self.denominator!r}")
        if self.state_layout not in STATE_LAYOUTS:
            raise ValueError(f"state_layout must be one of {STATE_LAYOUTS}; got {self.state_layout!r}")
        if self.feature == "taylor":
            if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 0:
                raise ValueError(f"order must be an int >= 0 for feature='taylor'; got order={self.order!r}")
        elif self.order is not None:
            raise ValueError(
                f"order is only used by feature='taylor'; pass order=None for "
                f"feature={self.feature!r}; got order={self.order!r}"
            )
        if self.clamp is not None and self.feature not in ("taylor", "exp"):
            raise ValueError(
                f"clamp applies to q.k before the series or exp (feature 'taylor' or "
                f"'exp'); got clamp={self.clamp!r} with feature={self.feature!r}"
            )
        if self.clamp is not None and not math.isfinite(self.clamp):
            raise ValueError(f"clamp must be a finite number or None; got clamp={self.clamp!r}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number or None; got scale={self.scale!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a positive finite number; got eps={self.eps!r}")
        if not isinstance(self.gate, bool):
            raise ValueError(f"gate must be a bool; got gate={self.gate!r}")

    @property
    def needs_gate(self) -> bool:
        """Whether the layer must compute a gate (B, T, H, Dv or 1) for this variant."""
        return self.gate

    @property
    def supports_recurrent(self) -> bool:
        """Whether the variant has a finite RNN state (recurrent form, decoding, states).

        False for exp (an infinite series) and for any clamp of q.k.
        """
        return self.feature != "exp" and self.clamp is None

    def resolved_scale(self, head_dim: int) -> float:
        """The scale actually used: `scale`, or its documented default."""
        if self.scale is not None:
            return float(self.scale)
        return 1.0 / math.sqrt(head_dim) if self.feature in ("taylor", "exp") else 1.0


def _registry() -> dict[str, AttentionVariant]:
    base = AttentionVariant(feature="taylor", order=2)
    out = {f"taylor{n}": dataclasses.replace(base, order=n) for n in (1, 2, 3, 4)}
    # Denominator ablations at order 2 (the largest order with a practical RNN state).
    suffix = {
        "none": "none",
        "position": "position",
        "l2norm": "l2",
        "rms": "rms",
        "layernorm": "layernorm",
        "detached": "detached",
    }
    for name, den in suffix.items():
        out[f"taylor2-{name}"] = dataclasses.replace(base, denominator=den)
    # The output gate replacing the denominator: divide by position, then gate
    # (the paper's "divide by S + output gate"); and the detached denominator with a gate.
    out["taylor2-gate"] = dataclasses.replace(base, denominator="position", gate=True)
    out["taylor2-detached-gate"] = dataclasses.replace(base, denominator="detached", gate=True)
    # The same ablations on exp itself (parallel form only; no clamp: add one with
    # dataclasses.replace(..., clamp=5.0) to follow the original code).
    exp = AttentionVariant(feature="exp", order=None)
    out["exp"] = exp
    for name, den in suffix.items():
        out[f"exp-{name}"] = dataclasses.replace(exp, denominator=den)
    out["exp-gate"] = dataclasses.replace(exp, denominator="position", gate=True)
    # Linear attention for comparison. elu+1 and relu are non-negative, so their true
    # denominator is safe; cosine similarities can sum to zero, so cosine divides by
    # the position (Cottention with the stabiliser exponent fixed at 1, query side).
    out["linear-elu"] = AttentionVariant(feature="elu+1", order=None)
    out["linear-relu"] = AttentionVariant(feature="relu", order=None)
    out["linear-cosine"] = AttentionVariant(feature="cosine", order=None, denominator="position")
    return out


VARIANTS: dict[str, AttentionVariant] = _registry()


def resolve_variant(variant: str | AttentionVariant) -> AttentionVariant:
    """A registry name or an `AttentionVariant` -> the `AttentionVariant`."""
    if isinstance(variant, AttentionVariant):
        return variant
    if isinstance(variant, str) and variant in VARIANTS:
        return VARIANTS[variant]
    raise ValueError(f"variant must be an AttentionVariant or one of {sorted(VARIANTS)}; got {variant!r}")
