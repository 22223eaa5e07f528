"""Compile Triton kernels for GPU targets on a machine without a GPU (run in a subprocess without
TRITON_INTERPRET, because the interpreter replaces triton.jit). Reads a JSON list of cases on stdin,
prints a JSON list of results."""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction


def _jit_function(obj):
    # Autotuner and Heuristics wrap the JITFunction in `.fn`, possibly several times.
    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


def _cuobjdump():
    try:
        from triton import knobs

        return knobs.nvidia.cuobjdump.path
    except (ImportError, AttributeError):  # a Triton without knobs: the binary ships beside ptxas
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def register_usage(cubin):
    """Registers per thread, stack frame bytes and local-memory instructions of a cubin, read from the SASS
    with cuobjdump: Triton kernels keep no arrays in local memory, so a stack frame or any STL/LDL
    instruction is ptxas spilling registers. (Triton 3.9 reports n_spills only once a kernel is loaded on a
    GPU, CompiledKernel.n_spills, and its metadata has no such field.)"""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as file:
        file.write(cubin)
    try:
        usage = subprocess.run([_cuobjdump(), "-res-usage", file.name], capture_output=True, text=True, check=True)
        sass = subprocess.run([_cuobjdump(), "-sass", file.name], capture_output=True, text=True, check=True)
    finally:
        os.remove(file.name)
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage.stdout))
    return {
        "registers": int(fields["REG"]),
        "stack_bytes": int(fields["STACK"]) + int(fields["LOCAL"]),
        "spill_instructions": len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\s", sass.stdout)),
    }


def compile_case(case):
    module = importlib.import_module(case["module"])
    kernel = _jit_function(getattr(module, case["kernel"]))
    constexprs = {(kernel.arg_names.index(name),): value for name, value in case["constexprs"].items()}
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in case.get("divisible_by_16", [])}
    source = ASTSource(kernel, case["signature"], constexprs=constexprs, attrs=attrs)
    target = GPUTarget("cuda", case["arch"], 32)
    compiled = triton.compile(source, target=target,
                              options={"num_warps": case["num_warps"], "num_stages": case["num_stages"]})
    ptx = compiled.asm["ptx"]
    return {
        "shared": compiled.metadata.shared,
        "wgmma": "wgmma" in ptx,
        "mma": "mma.sync" in ptx or "wgmma" in ptx,
        "tma": "cp.async.bulk.tensor" in ptx,  # a TMA (tensor descriptor) load or store
        "local_memory_spill": ".local" in ptx,
        **register_usage(compiled.asm["cubin"]),
    }


def main():
    warnings.simplefilter("ignore")
    results = []
    for case in json.load(sys.stdin):
        try:
            results.append({"ok": True, **compile_case(case)})
        except Exception as error:  # reported per case, so one failure does not hide the others
            results.append({"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
