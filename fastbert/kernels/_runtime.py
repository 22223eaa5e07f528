"""How this package's kernels run in this process: compiled for a CUDA GPU, or on CPU tensors through
Triton's interpreter. Chosen once, here, before any kernel is defined: fastbert/kernels/__init__.py
imports this module first, and nothing else in fastbert decides it.

The rule:
- TRITON_INTERPRET set in the environment wins, read as Triton reads it (1, true, on, yes, y).
- Otherwise the kernels are interpreted exactly when torch sees no CUDA device. torch.cuda.is_available()
  asks the driver for a device count; it creates no CUDA context and leaves torch.cuda uninitialised.
  Asking at import is acceptable because this package is imported only to run kernels: fastbert imports
  it when a model picks the triton backend (engine/triton_ops.py), never at `import fastbert`, and a model
  on a GPU initialises CUDA right after anyway.

The choice is for the whole process, not per model, because Triton reads it twice: triton.jit decides
compiled or interpreted when it decorates a function, and interpreted kernels read
triton.knobs.runtime.interpret (TRITON_INTERPRET) again while they run. When the choice is to interpret,
it is therefore written to TRITON_INTERPRET, before triton is imported here, so that Triton's own library
functions (tl.sum, tl.cdiv, tl.sigmoid, ...) are decorated for the interpreter at Triton's import.

One case leaves no clean way: triton already imported in compiled mode before this module ran (by
transformers, sentence-transformers or the user). Its library functions are then compiled-kernel
functions that interpreted code cannot call, and Triton 3.6-3.9 offer no switch for functions already
decorated (triton.jit reads the knob only at decoration). Then, and only then, interpret_imported_triton
decorates them again; on a machine with a GPU that would break other libraries' GPU kernels, so there it
refuses with an error that says what to do instead.
"""

import os
import re
import sys

import torch

# The values Triton's getenv_bool reads as true (case-insensitive, unstripped).
_TRUE_SETTINGS = ("1", "true", "on", "yes", "y")


def _choose_interpreter() -> bool:
    setting = os.environ.get("TRITON_INTERPRET")
    if setting is not None:
        return setting.lower() in _TRUE_SETTINGS
    return not torch.cuda.is_available()


def interpret_imported_triton():
    """Make an already imported Triton's own library functions run inside interpreted kernels.

    Each function Triton decorated at its import, before the interpreter was chosen, is decorated again,
    exactly as an import with TRITON_INTERPRET=1 would have: in triton.language's modules and as tensor
    methods (nothing to do where Triton was imported with the interpreter on). Refused where a GPU is
    present, since the switch is for the whole process."""
    import triton
    from triton.runtime.jit import JITFunction

    modules = [module for name, module in list(sys.modules.items())
               if module is not None and (name == "triton.language" or name.startswith("triton.language."))]
    namespaces = [*modules, *(value for module in modules for value in vars(module).values()
                              if isinstance(value, type) and value.__module__ == module.__name__)]
    compiled = [(namespace, name, value) for namespace in namespaces for name, value in vars(namespace).items()
                if isinstance(value, JITFunction)]
    if not compiled:
        return
    if torch.cuda.is_available():
        raise RuntimeError(
            "fastbert's kernels are to run through Triton's interpreter (TRITON_INTERPRET is set), but triton "
            "was already imported for the GPU in this process (switching it would break GPU kernels): set "
            "TRITON_INTERPRET=1 in the environment before starting Python, unset it to compile the kernels for "
            "the GPU, or use backend='torch' on CPU"
        )
    redecorated = {}  # one interpreted function per original, however many names it has
    for namespace, name, function in compiled:
        if id(function) not in redecorated:
            redecorated[id(function)] = triton.jit(function.fn)
        setattr(namespace, name, redecorated[id(function)])


def _version_tuple(version):
    """(major, minor) of a version string such as '3.6.0', '2.4.0rc1' or '3.7.0+git1234'."""
    major_minor = re.match(r"(\d+)\.(\d+)", version)
    return (int(major_minor[1]), int(major_minor[2])) if major_minor else (0, 0)


def check_interpreter_support():
    """Triton 3.6's interpreter converts 1-element arrays to ints, which NumPy 2.4 made an error: every
    kernel loop then fails deep inside Triton. Say so plainly instead (checked: 3.6 fails, 3.7 and 3.9 work)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        triton_version, numpy_version = version("triton"), version("numpy")
    except PackageNotFoundError:
        return
    if _version_tuple(triton_version) < (3, 7) and _version_tuple(numpy_version) >= (2, 4):
        raise RuntimeError(
            f"Triton {triton_version}'s CPU interpreter does not work with NumPy {numpy_version}: "
            "install 'numpy<2.4' or 'triton>=3.7', or use backend='torch' on CPU"
        )


_INTERPRETER = _choose_interpreter()
if _INTERPRETER:
    if "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
    if "triton" in sys.modules:
        interpret_imported_triton()


def is_interpreter() -> bool:
    """True when this package's kernels run on CPU tensors through Triton's interpreter."""
    return _INTERPRETER
