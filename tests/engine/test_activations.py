"""Every hidden_act a BERT-family config.json may name, through the GEMM epilogue of both backends, against
transformers' own activation function applied to a float64 GEMM."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from fastbert.checkpoint.activations import ACTIVATIONS, EPILOGUE_FUNCTIONS
from fastbert.engine.gemm import torch_linear
from tests.kernels.linear_cases import make_inputs
from tests.tolerances import ACTIVATION_FLOOR_FP32, SILU_SATURATION, TORCH_ERROR_MULTIPLE, assert_close

transformers_activations = pytest.importorskip("transformers.activations")


def float64_reference(x, weight, bias, hidden_act):
    return transformers_activations.ACT2FN[hidden_act](F.linear(x.double(), weight.double(), bias.double()))


def kernel_linear():
    return importlib.import_module("fastbert.kernels.linear").linear


def test_every_kernel_activation_is_reachable():
    """The table maps onto exactly the activations the GEMM kernels implement, each with a PyTorch form."""
    kernel_activations = importlib.import_module("fastbert.kernels.linear").ACTIVATIONS
    assert {activation.epilogue for activation in ACTIVATIONS.values()} == set(kernel_activations) - {None}
    assert EPILOGUE_FUNCTIONS.keys() == set(kernel_activations)


@pytest.mark.parametrize("hidden_act", sorted(ACTIVATIONS))
def test_the_oracle_computes_each_activation_as_transformers_does(hidden_act):
    """Every hidden_act the config accepts carries transformers' own function, to the bit: the reference
    encoder applies it (an approximation that merely agrees to rounding would hide which one a model uses)."""
    x = 4 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ACTIVATIONS[hidden_act].function(x), transformers_activations.ACT2FN[hidden_act](x))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's numpy exp in the tanh form
@pytest.mark.parametrize("hidden_act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("implementation", ["triton", "torch"])
def test_epilogue_matches_transformers_in_float64(hidden_act, implementation, device, backend):
    # Odd sizes; outputs O(1) to O(3), where every activation is far from linear.
    x, weight, bias = make_inputs(37, 67, 45, torch.float32, device)
    x = 3 * x
    run = kernel_linear() if implementation == "triton" else torch_linear
    if implementation == "torch":
        x, weight, bias = x.cpu(), weight.cpu(), bias.cpu()
    out = run(x, weight, bias, ACTIVATIONS[hidden_act].epilogue).cpu()
    x, weight, bias = x.cpu(), weight.cpu(), bias.cpu()
    expected = float64_reference(x, weight, bias, hidden_act)
    # At most twice the error of transformers' own fp32 computation on the same inputs (flash-attention's
    # rule, tests/tolerances.py)...
    own = transformers_activations.ACT2FN[hidden_act](F.linear(x, weight, bias))
    assert_close(out, expected, torch.float32, backend if implementation == "triton" else "interpreter",
                 torch_same_dtype=own)
    # ... and, where the products are IEEE fp32 like PyTorch's CPU GEMM, with a floor of one fp32 ulp at
    # O(10) only: rounding, not a wrong formula.
    own, out = own.double(), out.double()
    own_error, error = (own - expected).abs().max().item(), (out - expected).abs().max().item()
    if implementation == "torch" or backend == "interpreter":  # IEEE fp32 products, as PyTorch's CPU GEMM
        assert error <= TORCH_ERROR_MULTIPLE * own_error + ACTIVATION_FLOOR_FP32, (
            f"error {error:.2e} vs transformers' own fp32 error {own_error:.2e}")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's numpy exp; 1/(1+inf) = 0
def test_silu_saturates(device):
    """Large |x|: silu(x) is x or 0, never NaN from an overflowing exp."""
    x = torch.tensor([[-200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 200.0]], device=device)
    out = kernel_linear()(x, torch.eye(7, device=device), activation="silu")
    torch.testing.assert_close(out.cpu(), F.silu(x.cpu()), **SILU_SATURATION)
