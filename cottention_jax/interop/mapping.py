"""Parameter tables: which PyTorch tensor is which parameter of ours, and how its layout changes.

A table is a tuple of `Entry(hf, ours, layout, part)`: `hf` the state-dict name, `ours` the
path of the `nnx.Param` ("." between parts; `{i}` is the layer index in both), `layout` how
the tensor turns into ours (`LAYOUTS`), `part` which part of the model it belongs to (the
converters load the parts a checkpoint has: e.g. "cosine" for the stabilizers, "mlm" for BERT's
MLM head). `format_table` prints a table for a docstring.

Layouts, with H heads of size D (torch Linear weights are (out, in); ours (in, out)):
  same        the same array
  linear      W (out, in)        -> kernel (in, out)          W.T
  to_heads    W (H*D, in)        -> kernel (in, H, D)         q/k/v projections
  from_heads  W (out, H*D)       -> kernel (H, D, out)        the output projection
  head_bias   b (H*D,)           -> bias (H, D)
  per_head    m (1, H, 1, 1)     -> stabilizer (H,)           Cottention's norm_const
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["Entry", "LAYOUTS", "export_parameters", "format_table", "load_parameters"]

M = TypeVar("M", bound=nnx.Module)
LAYOUTS = ("same", "linear", "to_heads", "from_heads", "head_bias", "per_head")


@dataclasses.dataclass(frozen=True)
class Entry:
    hf: str
    ours: str
    layout: str = "same"
    part: str = "base"


def _to_ours(x: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    if layout in ("linear", "to_heads", "from_heads"):
        x = x.T
    return x.reshape(shape)


def _to_hf(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return x.T
    if layout == "to_heads":
        return x.reshape(x.shape[0], -1).T
    if layout == "from_heads":
        return x.reshape(-1, x.shape[-1]).T
    if layout == "head_bias":
        return x.reshape(-1)
    if layout == "per_head":
        return x.reshape(1, -1, 1, 1)
    return x


def _hf_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return _to_hf(np.empty(shape, np.uint8), layout).shape


def _expand(table, num_layers: int, parts) -> list[Entry]:
    out = []
    for entry in table:
        if entry.part not in parts:
            continue
        if "{i}" in entry.hf:
            out += [
                Entry(entry.hf.format(i=i), entry.ours.format(i=i), entry.layout, entry.part) for i in range(num_layers)
            ]
        else:
            out.append(entry)
    return out


def _path(ours: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in ours.split("."))


def format_table(table) -> str:
    """The table as aligned text lines: PyTorch name, our parameter, layout, part."""
    width = max(len(e.hf) for e in table)
    ours = max(len(e.ours) for e in table)
    return "\n".join(f"  {e.hf:<{width}}  {e.ours:<{ours}}  {e.layout:<10}  {e.part}" for e in table)


def load_parameters(
    build: Callable[[], M],
    state: dict[str, np.ndarray],
    table,
    *,
    num_layers: int,
    parts,
    required,
    ignored=(),
    where: str = "state dict",
) -> tuple[M, list[str]]:
    """The model `build()` makes, its parameters from `state` as the table says.

    parts: the table parts to read; required: those whose tensors must all be present (a
    ValueError names the first missing); the other parts' missing tensors, and parameters no
    entry fills, are initialised as `build` initialises them. A tensor no entry reads and no
    regex in `ignored` matches is a ValueError (nothing is dropped silently), and so is a tensor
    read that is not floating point (int, bool, complex: no cast makes it a weight). `where`
    names the source in every error (its file). Returns the model and the our-side names of the
    parameters that were initialised rather than loaded.
    """
    graphdef, params, *_ = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
    flat = dict(nnx.to_flat_state(params))
    loaded, consumed = set(), set()
    for entry in _expand(table, num_layers, parts):
        path = _path(entry.ours)
        if entry.hf not in state:
            if entry.part in required:
                raise ValueError(
                    f"{where}: the state dict has no {entry.hf!r} (for {entry.ours}); its names look "
                    f"like {sorted(state)[:4]}"
                )
            continue
        var = flat[path]
        value = np.asarray(state[entry.hf])
        if not jnp.issubdtype(value.dtype, jnp.floating):  # bfloat16 included; no silent cast to float
            raise ValueError(
                f"{where}: tensor {entry.hf!r} has dtype {value.dtype}; a weight must be floating "
                f"point (float32, float16, bfloat16, float64) for {entry.ours}"
            )
        want = _hf_shape(var.shape, entry.layout)
        if value.shape != want:
            raise ValueError(
                f"{where}: {entry.hf!r} has shape {value.shape}; the model config needs {want} (for "
                f"{entry.ours}, shape {var.shape})"
            )
        var.set_value(jnp.asarray(_to_ours(value, entry.layout, var.shape), var.dtype))
        loaded.add(path)
        consumed.add(entry.hf)
    patterns = [re.compile(p) for p in ignored]
    unread = sorted(n for n in state if n not in consumed and not any(p.fullmatch(n) for p in patterns))
    if unread:
        raise ValueError(
            f"{where}: the state dict holds {len(unread)} tensor(s) this model has no place for, e.g. "
            f"{unread[:5]}: another architecture, or a config that does not match it"
        )
    fresh = [path for path in flat if path not in loaded]
    initial, rest = _initial_values(build, fresh)
    for path in fresh:
        flat[path].set_value(initial[path])
    return cast(M, nnx.merge(graphdef, params, rest)), [".".join(map(str, p)) for p in fresh]


def _initial_values(build, paths: list[tuple]) -> tuple[dict, nnx.State]:
    """The initial values of the parameters at `paths` and the non-parameter state, from `build` under
    jit: the initialisers of the other parameters feed no output, so XLA drops them."""

    @jax.jit
    def initial():
        model = build()
        flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
        return {"/".join(map(str, p)): flat[p][...] for p in paths}, nnx.state(model, nnx.Not(nnx.Param))

    values, rest = initial()
    return {p: values["/".join(map(str, p))] for p in paths}, rest


def export_parameters(model: nnx.Module, table, *, num_layers: int, parts) -> dict[str, np.ndarray]:
    """{PyTorch name: array} of the table's parts, in PyTorch's layouts (the inverse of load_parameters)."""
    flat = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return {
        e.hf: np.asarray(_to_hf(np.asarray(flat[_path(e.ours)]), e.layout)) for e in _expand(table, num_layers, parts)
    }
