"""sentence-transformers modules that act on the sentence embedding: Dense, LayerNorm, Normalize, Dropout.

Each loader reads a module's folder (config.json, and weights from model.safetensors or
pytorch_model.bin) and returns (module, the embedding size after it); a module is called on [B, D]
float32 on the model's device. Anything a module's files ask for that fastbert does not reproduce is a
ValueError naming the file, never ignored."""

from dataclasses import dataclass

import torch

from fastbert.checkpoint.weights import read_state_dict
from fastbert.jsonio import read_json

# Dense activations: the torch.nn classes sentence-transformers instantiates with no arguments.
ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "SiLU", "Sigmoid", "LeakyReLU", "ELU", "SELU", "CELU", "Mish",
               "Softplus", "Softsign", "Hardtanh", "Hardswish", "Hardsigmoid", "ReLU6", "Tanhshrink", "LogSigmoid")
SENTENCE_EMBEDDING = "sentence_embedding"


def int_option(value, what, minimum=1):
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_io_names(config, source):
    """Sentence-level modules must read and write the sentence embedding (not token embeddings)."""
    for key in ("module_input_name", "module_output_name"):
        if config.get(key) not in (None, SENTENCE_EMBEDDING):
            raise ValueError(f"{source}: {key}={config[key]!r} is not supported (only {SENTENCE_EMBEDDING!r})")


# Each module's output_dim(dim) checks the size the modules before it give and returns the size it gives.


def _check_input_dim(name, expected, dim):
    if dim != expected:
        raise ValueError(f"{name} expects {expected} features but the modules before it give {dim} "
                         "(pooling modes other than the folder's?)")


@dataclass
class Dense:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None
    activation: torch.nn.Module
    residual: torch.Tensor | None  # use_residual: None (off), an [out, in] projection, or the identity
    use_residual: bool = False
    name: str = "Dense"

    def __call__(self, x):
        out = self.activation(torch.nn.functional.linear(x, self.weight, self.bias))
        if self.use_residual:
            out = out + (x if self.residual is None else torch.nn.functional.linear(x, self.residual))
        return out

    def output_dim(self, dim):
        _check_input_dim(self.name, self.weight.shape[1], dim)
        return self.weight.shape[0]

    def to(self, device):
        move = (lambda t: None if t is None else t.to(device=device, dtype=torch.float32))
        return Dense(move(self.weight), move(self.bias), self.activation, move(self.residual), self.use_residual,
                     self.name)


def _activation(path, source):
    """A torch.nn activation class path (torch.nn.Tanh, torch.nn.modules.activation.Tanh) -> an instance."""
    if path is None:
        return torch.nn.Tanh()  # sentence-transformers' default
    name = path.rsplit(".", 1)[-1] if isinstance(path, str) else None
    if not isinstance(path, str) or not path.startswith("torch.nn.") or name not in ACTIVATIONS:
        raise ValueError(f"{source}: activation_function {path!r} is not supported; fastbert runs torch.nn's "
                         f"{', '.join(ACTIVATIONS)}")
    return getattr(torch.nn, name)()


def load_dense(folder, dim, source):
    config = read_json(folder / "config.json")
    _check_io_names(config, source)
    in_features = int_option(config.get("in_features"), f"{source}: in_features")
    out_features = int_option(config.get("out_features"), f"{source}: out_features")
    if in_features is None or out_features is None:
        raise ValueError(f"{source}: config.json needs in_features and out_features")
    if in_features != dim:
        raise ValueError(f"{source}: in_features={in_features} but the modules before it give {dim} features")
    has_bias = config.get("bias", True)
    use_residual = config.get("use_residual", False)
    activation = _activation(config.get("activation_function"), source)
    state = read_state_dict(folder)
    expected = {"linear.weight": (out_features, in_features)}
    if has_bias:
        expected["linear.bias"] = (out_features,)
    if use_residual and in_features != out_features:
        expected["residual.weight"] = (out_features, in_features)
    if set(state) != set(expected):
        raise ValueError(f"{source}: weights {sorted(state)} do not match the config, which needs {sorted(expected)}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, config needs {shape}")
    weights = {key: state[key].float() for key in expected}
    return Dense(weights["linear.weight"], weights.get("linear.bias"), activation, weights.get("residual.weight"),
                 bool(use_residual), source), out_features


@dataclass
class LayerNorm:
    weight: torch.Tensor
    bias: torch.Tensor
    name: str = "LayerNorm"

    def __call__(self, x):
        return torch.nn.functional.layer_norm(x, self.weight.shape, self.weight, self.bias)  # nn.LayerNorm's eps

    def output_dim(self, dim):
        _check_input_dim(self.name, self.weight.shape[0], dim)
        return dim

    def to(self, device):
        return LayerNorm(self.weight.to(device, torch.float32), self.bias.to(device, torch.float32), self.name)


def load_layer_norm(folder, dim, source):
    config = read_json(folder / "config.json")
    if config.get("dimension") != dim:
        raise ValueError(f"{source}: dimension={config.get('dimension')!r} but the modules before it give {dim}")
    state = read_state_dict(folder)
    if sorted(state) != ["norm.bias", "norm.weight"] or any(t.shape != (dim,) for t in state.values()):
        raise ValueError(f"{source}: expected norm.weight and norm.bias of shape ({dim},), found {sorted(state)}")
    return LayerNorm(state["norm.weight"].float(), state["norm.bias"].float(), source), dim


@dataclass
class Normalize:
    name: str = "Normalize"

    def __call__(self, x):
        return torch.nn.functional.normalize(x, p=2, dim=-1)

    def output_dim(self, dim):
        return dim

    def to(self, device):
        return self


def load_normalize(folder, dim, source):
    _check_io_names(read_json(folder / "config.json", default={}), source)
    return Normalize(source), dim


def load_dropout(folder, dim, source):
    return None, dim  # inference: the identity
