"""Version 0.x keeps no deprecation aliases: a renamed module or function is renamed everywhere, and
the old name is an ImportError / AttributeError, not a warning.

Checked two ways: the old modules and names are gone, and no source file of the two packages
emits a DeprecationWarning of its own (a `warnings.warn(..., DeprecationWarning)` call, read from
the source, so that an alias behind a module `__getattr__` is found without knowing its name).
"""

from __future__ import annotations

import ast
import importlib
import sys

import pytest

from tests._util import REPO_ROOT

PACKAGES = ("cottention_jax", "pallas_kernels")

REMOVED_MODULES = [
    "pallas_kernels.cosine_attn.chunked",
    "cottention_jax.benchmark",
    "cottention_jax.rnn_attention",
    "cottention_jax.models._deprecated",
    "cottention_jax.data.build",
]
# (module, the old name it answered with a warning)
REMOVED_NAMES = [
    ("cottention_jax.models", "lm_loss"),
    ("cottention_jax.models", "perplexity"),
    ("cottention_jax.models", "mlm_loss"),
    ("cottention_jax.models", "classification_loss"),
    ("cottention_jax.models.gpt", "lm_loss"),
    ("cottention_jax.models.gpt", "perplexity"),
    ("cottention_jax.models.bert", "mlm_loss"),
    ("cottention_jax.models.bert", "classification_loss"),
    ("cottention_jax.layers", "_ProjectedAttention"),
    ("pallas_kernels.cosine_attn.xla", "chunked_linear_attention"),
    ("pallas_kernels.cosine_attn.pallas", "causal_linear_attention"),
]


@pytest.mark.parametrize("name", REMOVED_MODULES)
def test_a_removed_module_does_not_import(name, monkeypatch):
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


@pytest.mark.parametrize(("module", "name"), REMOVED_NAMES, ids=lambda x: x)
def test_a_removed_name_is_an_attribute_error(module, name):
    with pytest.raises(AttributeError):
        getattr(importlib.import_module(module), name)


def _warns_deprecation(call: ast.Call) -> bool:
    """`warnings.warn(...)` / `warn(...)` whose category (second argument or category=) is DeprecationWarning."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name != "warn":
        return False
    categories = [*call.args[1:2], *(k.value for k in call.keywords if k.arg == "category")]
    return any(
        isinstance(c, ast.Name) and c.id in ("DeprecationWarning", "PendingDeprecationWarning") for c in categories
    )


def deprecation_warnings_in(source: str, filename: str) -> list[int]:
    """Lines of `source` that emit a DeprecationWarning of their own."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source, filename))
        if isinstance(node, ast.Call) and _warns_deprecation(node)
    ]


def test_the_source_scan_finds_a_deprecation_alias():
    alias = (
        "import warnings\nfrom warnings import warn\n"
        "def __getattr__(name):\n"
        "    warnings.warn('old is now new', DeprecationWarning, stacklevel=2)\n"
        "    warn('x', category=PendingDeprecationWarning)\n"
        "    warnings.warn('just a notice')\n"
        "    warnings.filterwarnings('ignore', category=DeprecationWarning)\n"
    )
    assert deprecation_warnings_in(alias, "alias.py") == [4, 5]


def test_no_source_file_emits_a_deprecation_warning_of_its_own():
    found = [
        f"{path.relative_to(REPO_ROOT)}:{line}"
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for line in deprecation_warnings_in(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not found, "deprecation aliases (version 0.x renames without them): " + ", ".join(found)
