"""The flat layout's import paths (fastbert.model, fastbert.workers, ...) keep working for one release: each
gives its new module, with a DeprecationWarning that names the new path."""

import importlib
import subprocess
import sys

import pytest

from fastbert import _moved


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_old_path_gives_the_new_module_with_a_warning(old):
    new = _moved.MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_model_path_is_the_public_model():
    import fastbert

    sys.modules.pop("fastbert.model", None)
    with pytest.warns(DeprecationWarning):
        from fastbert.model import FastBertModel
    assert FastBertModel is fastbert.FastBertModel and hasattr(FastBertModel, "encode")


def test_every_new_path_exists():
    for new in _moved.MOVED.values():
        importlib.import_module(new)


def test_unknown_names_are_still_errors():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fastbert.no_such_module")
    import fastbert

    with pytest.raises(AttributeError, match="no_such_name"):
        fastbert.no_such_name  # noqa: B018


def test_import_fastbert_loads_no_torch():
    """The package face loads its public names on first use, so a bare import (the CLI's start-up) is cheap."""
    code = "import sys, fastbert; assert 'torch' not in sys.modules, 'torch imported'; print(fastbert.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
