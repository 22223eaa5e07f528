"""A checkpoint folder's sentence-transformers pipeline, reproduced module by module.

modules.json lists the modules sentence-transformers runs in order: a Transformer (fastbert's encoder),
then Pooling, then modules on the sentence embedding (Dense, LayerNorm, Dropout, Normalize). Each class
path maps to a loader in MODULES; a module that is not in the table is an error naming it, never skipped.
A folder without modules.json gets what sentence-transformers builds for a plain checkpoint: mean
pooling, nothing after it.

Also read here: the Transformer's sentence_bert_config.json (max_seq_length, do_lower_case), and
config_sentence_transformers.json (prompts, default_prompt_name)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pooling import check_modes, pool
from .weights import read_state_dict

# sentence-transformers gives every model these prompt names, empty unless the folder sets them.
DEFAULT_PROMPTS = {"query": "", "document": ""}
# Legacy Pooling flags, in the order sentence-transformers concatenates their modes.
LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Dense activations: the torch.nn classes sentence-transformers instantiates with no arguments.
ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "SiLU", "Sigmoid", "LeakyReLU", "ELU", "SELU", "CELU", "Mish",
               "Softplus", "Softsign", "Hardtanh", "Hardswish", "Hardsigmoid", "ReLU6", "Tanhshrink", "LogSigmoid")
TRANSFORMER_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json",
                            "sentence_distilbert_config.json", "sentence_camembert_config.json",
                            "sentence_xlm-roberta_config.json")
SENTENCE_EMBEDDING = "sentence_embedding"


def read_json(file, required=False):
    """A JSON object from `file`; {} when absent and not required. Anything else is a ValueError naming it."""
    file = Path(file)
    if not file.is_file():
        if required:
            raise FileNotFoundError(f"{file} is missing")
        return {}
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not readable JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{file} must hold a JSON object, found a {type(value).__name__}")
    return value


def _int_option(value, what, minimum=1):
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


# ---------------------------------------------------------------------------------------------------
# Modules on the sentence embedding: called on [B, D] float32, on the model's device. output_dim(dim)
# checks the size the modules before give and returns the size this one gives.


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
    config = read_json(folder / "config.json", required=True)
    _check_io_names(config, source)
    in_features = _int_option(config.get("in_features"), f"{source}: in_features")
    out_features = _int_option(config.get("out_features"), f"{source}: out_features")
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
    config = read_json(folder / "config.json", required=True)
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
    _check_io_names(read_json(folder / "config.json"), source)
    return Normalize(source), dim


def load_dropout(folder, dim, source):
    return None, dim  # inference: the identity


# ---------------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class Pooling:
    modes: tuple = ("mean",)
    include_prompt: bool = True


def load_pooling(folder, hidden_size, source):
    config = read_json(folder / "config.json", required=True)
    if "pooling_mode" in config:
        modes = check_modes(config["pooling_mode"], source)
    else:
        modes = tuple(mode for flag, mode in LEGACY_POOLING_FLAGS.items() if config.get(flag)) or ("mean",)
    dim = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if dim is not None and dim != hidden_size:
        raise ValueError(f"{source}: embedding_dimension={dim!r} but the encoder's hidden size is {hidden_size}")
    include_prompt = config.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise ValueError(f"{source}: include_prompt must be true or false, got {include_prompt!r}")
    return Pooling(modes, include_prompt)


@dataclass
class SentencePipeline:
    """What turns the encoder's packed tokens into sentence embeddings, as the folder's modules.json says."""

    hidden_size: int
    pooling: Pooling = field(default_factory=Pooling)
    modules: list = field(default_factory=list)  # Dense / LayerNorm / Normalize, in order
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict = field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    default_prompt_name: str | None = None
    truncate_dim: int | None = None

    def output_dim(self, modes=None):
        """The embedding size with pooling `modes` (default: the folder's), before truncate_dim; a
        ValueError when the modes do not fit the modules after the Pooling."""
        dim = self.hidden_size * len(modes or self.pooling.modes)
        for module in self.modules:
            dim = module.output_dim(dim)
        return dim

    def resolve_prompt(self, prompt=None, prompt_name=None):
        """sentence-transformers' rule: `prompt` wins (prompt_name is then ignored); else prompts[prompt_name];
        else the default prompt name's prompt; else none. Returns the prompt text or None."""
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts "
                                 f"{sorted(self.prompts)}")
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts[self.default_prompt_name]
        return None

    def embed(self, hidden, cu_seqlens, *, modes=None, prompt_tokens=0, normalize=None, truncate_dim=None):
        """Packed last hidden state [T, H] -> sentence embeddings [B, D] float32.

        normalize: None runs the folder's modules as they are; False leaves out a trailing Normalize;
        True L2-normalizes the final (truncated) vectors, like sentence-transformers' normalize_embeddings.
        prompt_tokens: leading tokens to leave out of pooling when the Pooling excludes the prompt."""
        skip = 0 if self.pooling.include_prompt else prompt_tokens
        x = pool(hidden, cu_seqlens, modes or self.pooling.modes, skip)
        modules = self.modules
        if normalize is False and modules and isinstance(modules[-1], Normalize):
            modules = modules[:-1]
        for module in modules:
            x = module(x)
        if truncate_dim is not None:
            x = x[:, :truncate_dim]
        if normalize:
            x = torch.nn.functional.normalize(x, p=2, dim=-1)
        return x

    def to(self, device):
        moved = [module.to(device) for module in self.modules]
        return SentencePipeline(self.hidden_size, self.pooling, moved, self.max_seq_length,
                                self.do_lower_case, self.prompts, self.default_prompt_name, self.truncate_dim)


def load_transformer(folder, dim, source):
    """Options of the Transformer module: (max_seq_length or None, do_lower_case)."""
    settings = {}
    for name in TRANSFORMER_CONFIG_FILES:
        settings = read_json(folder / name)
        if settings:
            break
    task = settings.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ValueError(f"{source}: transformer_task={task!r} is not supported (only feature-extraction)")
    processor = settings.get("processor_kwargs", settings.get("tokenizer_args")) or {}
    # As in sentence-transformers: the tokenizer's model_max_length, when the config sets it, wins.
    max_length = processor.get("model_max_length", settings.get("max_seq_length"))
    max_length = _int_option(max_length, f"{source}: max_seq_length", minimum=2)
    do_lower_case = settings.get("do_lower_case", False)
    if not isinstance(do_lower_case, bool):
        raise ValueError(f"{source}: do_lower_case must be true or false, got {do_lower_case!r}")
    return max_length, do_lower_case


# Class paths sentence-transformers has written in modules.json over its versions -> (kind, loader).
_TRANSFORMER = ("transformer", load_transformer)
_POOLING = ("pooling", load_pooling)
MODULES = {
    "sentence_transformers.models.Transformer": _TRANSFORMER,
    "sentence_transformers.sentence_transformer.modules.transformer.Transformer": _TRANSFORMER,
    "sentence_transformers.base.modules.transformer.Transformer": _TRANSFORMER,
    "sentence_transformers.models.Pooling": _POOLING,
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": _POOLING,
    **{path: ("sentence", load_dense) for path in (
        "sentence_transformers.models.Dense", "sentence_transformers.sentence_transformer.modules.dense.Dense",
        "sentence_transformers.base.modules.dense.Dense")},
    **{path: ("sentence", load_normalize) for path in (
        "sentence_transformers.models.Normalize", "sentence_transformers.sentence_transformer.modules.normalize"
        ".Normalize", "sentence_transformers.base.modules.normalize.Normalize")},
    **{path: ("sentence", load_layer_norm) for path in (
        "sentence_transformers.models.LayerNorm", "sentence_transformers.sentence_transformer.modules.layer_norm"
        ".LayerNorm")},
    **{path: ("sentence", load_dropout) for path in (
        "sentence_transformers.models.Dropout", "sentence_transformers.sentence_transformer.modules.dropout"
        ".Dropout")},
}
# The order modules may come in: one Transformer, one Pooling, then any modules on the sentence embedding.
_NEXT_KINDS = {None: ("transformer",), "transformer": ("pooling",), "pooling": ("sentence",),
               "sentence": ("sentence",)}


def load_pipeline(path, hidden_size, truncate_dim=None):
    """The SentencePipeline of checkpoint folder `path` (None: a model without a folder) for an encoder of
    `hidden_size`. Raises ValueError naming the first module fastbert cannot reproduce."""
    pipeline = SentencePipeline(hidden_size, truncate_dim=_int_option(truncate_dim, "truncate_dim"))
    if path is not None:
        root = Path(path)
        _read_prompts(root, pipeline)
        if (root / "modules.json").is_file():
            _read_modules(root, pipeline)
    if pipeline.truncate_dim is not None and pipeline.truncate_dim > pipeline.output_dim():
        raise ValueError(f"truncate_dim={pipeline.truncate_dim} exceeds the embedding size {pipeline.output_dim()}")
    return pipeline


def _read_modules(root, pipeline):
    modules_file = root / "modules.json"
    try:
        entries = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{modules_file} is not readable JSON: {err}") from err
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{modules_file} must hold a list of module objects")
    kind, dim = None, pipeline.hidden_size
    for number, entry in enumerate(entries):  # in list order, as sentence-transformers runs them
        class_path, sub = entry.get("type"), entry.get("path", "")
        source = f"{modules_file} module {entry.get('idx', number)} ({class_path})"
        if class_path not in MODULES:
            raise ValueError(f"{source}: fastbert cannot reproduce this sentence-transformers module; it runs "
                             f"Transformer, Pooling, Dense, LayerNorm, Dropout and Normalize. Load the bare "
                             f"encoder with FastBertModel.from_pretrained to skip the pipeline knowingly")
        if entry.get("kwargs"):
            raise ValueError(f"{source}: module kwargs {entry['kwargs']!r} are not supported")
        module_kind, loader = MODULES[class_path]
        if module_kind not in _NEXT_KINDS[kind]:
            raise ValueError(f"{source}: a {module_kind} module here is not supported; fastbert runs one "
                             "Transformer, then one Pooling, then modules on the sentence embedding")
        if not isinstance(sub, str) or Path(sub).is_absolute() or ".." in Path(sub).parts:
            raise ValueError(f"{source}: path {sub!r} must be a folder inside {root}")
        if module_kind == "transformer" and sub not in ("", "."):
            raise ValueError(f"{source}: a Transformer stored in {sub}/ is not supported; fastbert loads the "
                             f"encoder from {root} itself")
        if module_kind == "transformer":
            pipeline.max_seq_length, pipeline.do_lower_case = loader(root / sub, dim, source)
        elif module_kind == "pooling":
            pipeline.pooling = loader(root / sub, dim, source)
            dim *= len(pipeline.pooling.modes)
        else:
            module, dim = loader(root / sub, dim, source)
            if module is not None:
                pipeline.modules.append(module)
        kind = module_kind
    if kind not in ("pooling", "sentence"):
        raise ValueError(f"{modules_file} has no Pooling module after a Transformer: nothing makes a sentence "
                         "embedding")


def _read_prompts(root, pipeline):
    config_file = root / "config_sentence_transformers.json"
    config = read_json(config_file)
    model_type = config.get("model_type", "SentenceTransformer")
    if model_type != "SentenceTransformer":
        raise ValueError(f"{config_file}: model_type {model_type!r} is not a SentenceTransformer; fastbert "
                         "encodes sentence embeddings only")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ValueError(f"{config_file}: prompts must map names to prompt strings, got {prompts!r}")
    pipeline.prompts = {**DEFAULT_PROMPTS, **prompts}
    default = config.get("default_prompt_name")
    if default is not None and default not in pipeline.prompts:
        raise ValueError(f"{config_file}: default_prompt_name {default!r} is not one of the prompts "
                         f"{sorted(pipeline.prompts)}")
    pipeline.default_prompt_name = default
