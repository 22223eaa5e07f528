"""A checkpoint folder's sentence-transformers pipeline, reproduced module by module.

modules.json lists the modules sentence-transformers runs in order: a Transformer (fastbert's encoder),
then Pooling, then modules on the sentence embedding (Dense, LayerNorm, Dropout, Normalize). Each class
path maps to a loader in MODULES (Pooling's in fastbert.sentence.pooling, the sentence-embedding modules' in
fastbert.sentence.modules: each module's file owns its config, load and forward); a module that is not in
the table is an error naming it, never skipped.
A folder without modules.json gets what sentence-transformers builds for a plain checkpoint: mean
pooling, nothing after it.

Also read here: the Transformer's sentence_bert_config.json (max_seq_length, do_lower_case), and
config_sentence_transformers.json (prompts, default_prompt_name)."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastbert.jsonio import read_json

from .modules import (
    Normalize,
    int_option,
    load_dense,
    load_dropout,
    load_layer_norm,
    load_normalize,
)
from .pooling import Pooling, load_pooling

# sentence-transformers gives every model these prompt names, empty unless the folder sets them.
DEFAULT_PROMPTS = {"query": "", "document": ""}
TRANSFORMER_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json",
                            "sentence_distilbert_config.json", "sentence_camembert_config.json",
                            "sentence_xlm-roberta_config.json")


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
        x = self.pooling(hidden, cu_seqlens, modes, prompt_tokens)
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
        settings = read_json(folder / name, default={})
        if settings:
            break
    task = settings.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ValueError(f"{source}: transformer_task={task!r} is not supported (only feature-extraction)")
    # Text in, the encoder's last hidden state out as token embeddings: what fastbert runs (no chat
    # templates, images, or other outputs).
    modalities = settings.get("modality_config", {"text": {}})
    text_only = isinstance(modalities, dict) and set(modalities) == {"text"} and isinstance(modalities["text"], dict)
    if (not text_only or modalities["text"].get("method_output_name", "last_hidden_state") != "last_hidden_state"
            or settings.get("module_output_name", "token_embeddings") != "token_embeddings"):
        raise ValueError(f"{source}: only text inputs to the last hidden state are supported, got modality_config="
                         f"{modalities!r}, module_output_name={settings.get('module_output_name')!r}")
    processor = settings.get("processor_kwargs", settings.get("tokenizer_args")) or {}
    if not isinstance(processor, dict):
        raise ValueError(f"{source}: processor_kwargs must be a JSON object, got {processor!r}")
    # As in sentence-transformers: the tokenizer's model_max_length, when the config sets it, wins.
    max_length = processor.get("model_max_length", settings.get("max_seq_length"))
    max_length = int_option(max_length, f"{source}: max_seq_length", minimum=2)
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
    pipeline = SentencePipeline(hidden_size, truncate_dim=int_option(truncate_dim, "truncate_dim"))
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
    entries = read_json(modules_file, expect=list)
    if not all(isinstance(e, dict) for e in entries):
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
    config = read_json(config_file, default={})
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
