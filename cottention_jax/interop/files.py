"""PyTorch-style checkpoints without PyTorch: state dicts as {name: numpy array}.

Read: a Hugging Face model directory (`config.json` with `model.safetensors`, its sharded
`model.safetensors.index.json`, or `pytorch_model.bin`), a single `.safetensors` file, or a
torch `.bin`/`.pt`/`.pth` file. Safetensors are read with the `safetensors` package's NumPy
API (bfloat16 tensors, which NumPy lacks, as `ml_dtypes.bfloat16` from the file's own header);
torch files need torch, and say so when it is not installed. Write: one `.safetensors` file, and
`pytorch_model.bin` when torch is installed. Every error names the file it concerns
(`source_name`: the weights file read, or "state dict" for a mapping).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "CONFIG_NAME",
    "SAFETENSORS_NAME",
    "TORCH_NAME",
    "read_hf_config",
    "read_state_dict",
    "resolve_config",
    "source_name",
    "write_safetensors",
    "write_torch",
]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
_SAFE_INDEX = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
_TORCH_INDEX = "pytorch_model.bin.index.json"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")
# the dtype names of the safetensors header
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
        return dict(load_file(path))
    except TypeError:  # a dtype NumPy has no name for (bfloat16): read the raw bytes
        return _read_safetensors_raw(path)
    except SafetensorError as e:  # a damaged or truncated file: its message does not name it
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def _read_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file from its header: 8 bytes of header length, the JSON header
    {name: {dtype, shape, data_offsets}}, then the data."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = np.frombuffer(f.read(), np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which is not supported")
        start, end = info["data_offsets"]
        tensors[name] = data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch pickle: reading it needs torch (pip install torch), or save the "
            "weights as safetensors (model.save_pretrained(..., safe_serialization=True)) and read "
            "those"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:  # damaged, or not a torch file
        raise ValueError(f"{path}: torch.load cannot read it ({e})") from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, Mapping) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(
            f"{path}: holds no state dict {{name: tensor}} (got {type(state).__name__}); save model.state_dict()"
        )

    def to_numpy(t):
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    return {name: to_numpy(t.detach().cpu()) for name, t in state.items()}


def _read_file(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in _TORCH_SUFFIXES:
        return _read_torch(path)
    raise ValueError(f"source: {path} is neither a .safetensors nor a torch {'/'.join(_TORCH_SUFFIXES)} file")


def _read_json(path: Path) -> dict:
    """A JSON object from `path`; bad JSON, or JSON that is not an object, is a ValueError naming the file."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must hold a JSON object {{...}}; got a {type(value).__name__}")
    return value


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f'{index}: a sharded checkpoint\'s index needs a "weight_map" {{tensor: shard file}}')
    shards = sorted(set(weight_map.values()))
    state: dict[str, np.ndarray] = {}
    for shard in shards:
        state.update(_read_file(index.parent / shard))
    return state


def _weights_file(source) -> Path:
    """The file `read_state_dict` reads for a path: the file itself, or in a model directory the first
    of model.safetensors, its shard index, pytorch_model.bin, its shard index."""
    path = Path(os.fspath(source))
    if path.is_dir():
        for name in (SAFETENSORS_NAME, _SAFE_INDEX, TORCH_NAME, _TORCH_INDEX):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"source: the directory {path} holds none of {SAFETENSORS_NAME}, {_SAFE_INDEX}, "
            f"{TORCH_NAME}, {_TORCH_INDEX}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"source: {path} does not exist")
    return path


def source_name(source) -> str:
    """How errors name a source: its weights file (a shard index for sharded ones), or "state dict"."""
    return "state dict" if isinstance(source, Mapping) else str(_weights_file(source))


def read_state_dict(source) -> dict[str, np.ndarray]:
    """{name: array} from a mapping (of numpy/jax/torch-convertible arrays), a model directory or a file."""
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    path = _weights_file(source)
    return _read_sharded(path) if path.name.endswith(".index.json") else _read_file(path)


def _config_file(source) -> Path | None:
    if isinstance(source, Mapping):
        return None
    path = Path(os.fspath(source))
    return (path if path.is_dir() else path.parent) / CONFIG_NAME


def read_hf_config(source) -> dict | None:
    """config.json of a model directory (or of the directory holding a weights file); None if absent."""
    config = _config_file(source)
    return _read_json(config) if config is not None and config.is_file() else None


def write_safetensors(state: Mapping[str, np.ndarray], path) -> Path:
    """One .safetensors file (metadata {"format": "pt"}, as transformers writes); bfloat16 arrays
    are written as float32 (the NumPy API has no bfloat16)."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    arrays = {
        name: np.ascontiguousarray(a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a)
        for name, a in state.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, path, metadata={"format": "pt"})
    return path


def write_torch(state: Mapping[str, np.ndarray], path) -> Path | None:
    """`torch.save` of the state dict as torch tensors (bfloat16 as float32, as `write_safetensors`),
    the `pytorch_model.bin` the official Cottention loaders read; None, and nothing written, without torch."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a))
        for name, a in state.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return path


def resolve_config(
    state: Mapping[str, np.ndarray],
    source,
    config,
    attention: str | None,
    *,
    ours: type[Any],
    from_hf,
    hf_name: str,
    norm_const_suffix: str,
    overrides: dict,
) -> tuple[Any, str]:
    """Our config for a checkpoint: (config, attention).

    attention: "softmax" or "cosine"; None: "cosine" when the state dict has `norm_const` tensors
    (names ending in norm_const_suffix), the official Cottention checkpoints' stabilizers.
    config: an instance of `ours` (overrides and attention replace its fields), a transformers
    config dict, or None for the config.json beside `source`; dicts go through `from_hf`.
    """
    where = source_name(source)
    has_norm_const = any(name.endswith(norm_const_suffix) for name in state)
    if attention is None:
        attention = "cosine" if has_norm_const else "softmax"
    if attention == "softmax" and has_norm_const:
        raise ValueError(
            f"{where}: attention='softmax', but the checkpoint has cosine attention (its norm_const "
            "tensors): load it with attention='cosine' (the default)"
        )
    if isinstance(config, ours):
        return dataclasses.replace(config, attention=attention, **overrides), attention
    if config is not None:
        return from_hf(config, attention=attention, **overrides), attention
    config_file = _config_file(source)
    hf = read_hf_config(source)
    if hf is None:
        raise ValueError(
            f"config: none given and no {config_file or CONFIG_NAME} beside the weights ({where}); pass "
            f"the {hf_name} dict or our {ours.__name__}"
        )
    try:
        return from_hf(hf, attention=attention, **overrides), attention
    except ValueError as e:  # name the file that holds the bad value ("config: ..." -> "<path>: ...")
        raise ValueError(f"{config_file}: {str(e).removeprefix('config: ')}") from None
