"""fastbert: a Triton-kernel inference engine for BERT encoders."""

from pathlib import Path as _Path

# In a source checkout run with PYTHONPATH=. (no install), `fastbert.kernels` lives in the
# repository's top-level kernels/ folder: put the checkout on this package's search path so the
# import resolves exactly as it does after `pip install`, where the folder is mapped by pyproject.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "kernels").is_dir() and (_checkout / "kernels" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - __path__ is defined for packages

__version__ = "0.1.0"
