"""Checkpoint reading, and the mapping of each family's checkpoint names (the rows of
fastbert.checkpoint.families.FAMILIES) onto EncoderWeights (fastbert/checkpoint/encoder_weights.py): every
tensor taken is checked for presence and shape, and Q, K and V are fused into one projection, once."""

from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from fastbert.errors import bounded
from fastbert.jsonio import read_json

from .config import BertConfig
from .encoder_weights import EmbeddingWeights, EncoderWeights, LayerWeights, Linear, Norm
from .families import family_of

_PRE_NORM = "pre_norm"

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
# Read in this order: the first present wins (safetensors need no unpickling).
CHECKPOINT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, TORCH_FILE, TORCH_INDEX_FILE)
_FINITE_CHECK_SLICE = 1 << 24
# How many names an error lists of each kind (missing, mis-shaped, ...) before it counts the rest.
_NAMES_SHOWN = 6


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, on the CPU, under the checkpoint's own names.

    Reads model.safetensors when present (or a sharded model.safetensors.index.json), else
    pytorch_model.bin (or a sharded pytorch_model.bin.index.json) with torch.load(weights_only=True), so
    a pickle can never run code. `path` may also be one of those files. Shards named by an index must lie
    inside the index's folder.
    """
    path = Path(path)
    if path.is_file():
        return _read_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    for name in CHECKPOINT_FILES:
        if (path / name).is_file():
            return _read_file(path / name)
    raise FileNotFoundError(f"no {SAFETENSORS_FILE} or {TORCH_FILE} in {path} (nor a sharded index of either)")


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    if file.name.endswith(".index.json"):
        return _read_sharded(file)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except Exception as err:  # SafetensorError, OSError, ...: whatever the bytes are, name the file
            raise ValueError(f"{file} is not a readable safetensors file (corrupt or truncated?)") from err
    try:
        state_dict = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        # Junk bytes reach the legacy unpickler, which fails with whatever it trips on first (struct.error,
        # KeyError, IndexError, UnpicklingError, ...): all of them mean this file cannot be read.
        raise ValueError(
            f"{file} is not a readable PyTorch checkpoint "
            f"(corrupt, truncated, or pickling objects other than tensors?): {type(err).__name__}"
        ) from err
    if not isinstance(state_dict, dict) or not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise ValueError(f"{file} does not hold a state dict (a mapping of names to tensors)")
    return dict(state_dict)


def _read_sharded(index_file: Path) -> dict[str, torch.Tensor]:
    weight_map = read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_file} is not a valid checkpoint index (needs a 'weight_map' object)")
    not_names = [shard for shard in weight_map.values() if not isinstance(shard, str) or not shard]
    if not_names:
        raise ValueError(bounded(f"{index_file} names a shard {not_names[0]!r} that is not a file name"))
    shards = sorted(set(weight_map.values()))
    state_dict, origin = {}, {}
    for shard in shards:
        shard_file = _shard_path(index_file, shard)
        if not shard_file.is_file():
            raise FileNotFoundError(bounded(f"shard {shard_file} listed in {index_file} does not exist"))
        for name, tensor in _read_file(shard_file).items():
            if name in state_dict:
                raise ValueError(bounded(f"{index_file}: tensor {name!r} is in both {origin[name]} and {shard}"))
            state_dict[name], origin[name] = tensor, shard
    return state_dict


def _shard_path(index_file: Path, shard) -> Path:
    """The shard file an index names, which must be a weights file inside the index's folder.

    Checked on the name, not the resolved path: the Hugging Face cache links each file of a snapshot
    folder to a blob outside it, and those links are the checkpoint's own."""
    parts = PurePosixPath(shard.replace("\\", "/")).parts
    if PurePosixPath(shard).is_absolute() or PureWindowsPath(shard).is_absolute() or ".." in parts:
        raise ValueError(bounded(
            f"{index_file} names the shard {shard!r} outside the checkpoint folder: shards must be relative "
            "paths inside the folder that holds the index"))
    if not shard.endswith((".safetensors", ".bin")):
        raise ValueError(bounded(f"{index_file} names the shard {shard!r}, which is not a .safetensors or .bin file"))
    return index_file.parent.joinpath(*parts)


def check_finite(state_dict: dict[str, torch.Tensor], source) -> None:
    """Raise one ValueError naming every floating-point tensor that holds NaN or infinity: such a
    checkpoint would encode every text to NaN without a word."""
    bad = []
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        flat = tensor.reshape(-1)
        nans = infs = 0
        # In slices: a boolean copy of a 250k-token embedding table would cost a quarter of a gigabyte.
        for start in range(0, flat.numel(), _FINITE_CHECK_SLICE):
            part = flat[start : start + _FINITE_CHECK_SLICE]
            if not torch.isfinite(part).all():
                nans += int(torch.isnan(part).sum())
                infs += int(torch.isinf(part).sum())
        if nans or infs:
            counts = ", ".join(f"{n} {kind}" for n, kind in ((nans, "NaN"), (infs, "inf")) if n)
            bad.append(f"{name} ({counts})")
    if bad:
        raise ValueError(bounded(f"checkpoint {source} holds non-finite values in {len(bad)} tensor(s): {_few(bad)}"))


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: BertConfig
) -> tuple[EncoderWeights, dict[str, torch.Tensor]]:
    """Map the family's checkpoint names (config.model_type) onto EncoderWeights, fusing Q, K and V.

    Accepts the base model's names (BertModel, RobertaModel, ...), the prefix of task-model checkpoints
    ("bert.", "roberta.", "distilbert.", "electra.") and the legacy LayerNorm.gamma/.beta names.
    Returns (weights, head): `head` holds the tensors outside the encoder (cls.*, classifier.*,
    lm_head.*, ...) under their original names, untouched.
    Raises one ValueError listing every missing, unexpected and mis-shaped tensor.
    """
    family = family_of(config.model_type)
    prefix = family.prefix + "."
    prefixed = any(k.startswith(prefix) for k in state_dict)
    encoder, head, source_name = {}, {}, {}
    for key, tensor in state_dict.items():
        if prefixed:
            if not key.startswith(prefix):
                head[key] = tensor
                continue
            name = key[len(prefix) :]
        elif key.startswith(family.roots):
            name = key
        else:
            head[key] = tensor
            continue
        name = _modern_layer_norm_name(name)
        if name in family.buffers:
            continue
        if name in encoder:
            raise ValueError(bounded(f"checkpoint holds {source_name[name]!r} and {key!r}, which name the same tensor"))
        encoder[name], source_name[name] = tensor, key

    take = _Taker(encoder, lambda name: source_name.get(name, prefix + name if prefixed else name))
    # Before anything is built: a config asking for more layers or other widths than the tensors have
    # (num_hidden_layers=10**7) is one short error, not a table of ten million missing names.
    contradictions = _size_contradictions(encoder, config, family, take.shown)
    if contradictions:
        raise _mismatch(config, head, [("contradicted by the checkpoint", contradictions)], separator="; ")
    H, E, I = config.hidden_size, config.embedding_dim, config.intermediate_size
    their_names = family.embeddings  # our field -> the checkpoint name
    norm_bias = config.norm_bias
    embeddings = EmbeddingWeights(
        word=take.tensor(their_names["word"], (config.vocab_size, E)),
        position=(take.tensor(their_names["position"], (config.max_position_embeddings, E))
                  if "position" in their_names else None),
        token_type=(take.tensor(their_names["token_type"], (config.type_vocab_size, E))
                    if config.type_vocab_size and "token_type" in their_names else None),
        norm=take.norm(their_names["norm"], E, norm_bias),
        project=take.linear(family.projection, H, E) if E != H else None,
    )
    pre_norm = family.layer_style == _PRE_NORM
    attention_bias, mlp_bias = config.attention_bias, config.mlp_bias
    layers = []
    for i in range(config.num_hidden_layers):
        root = f"{family.layer_root}.{i}."
        their_names = {ours: root + theirs for ours, theirs in family.layer.items()}
        if "qkv" in their_names:
            qkv = take.linear(their_names["qkv"], 3 * H, H, attention_bias)
        else:
            qkv = _fuse(*(take.linear(their_names[part], H, H) for part in ("q", "k", "v")))
        # A pre-norm layer 0 normalises nothing before attention: the embeddings were just normalised.
        has_attn_norm = not (pre_norm and i == 0)
        layers.append(LayerWeights(
            qkv=qkv,
            attn_out=take.linear(their_names["attn_out"], H, H, attention_bias),
            attn_norm=take.norm(their_names["attn_norm"], H, norm_bias) if has_attn_norm else None,
            ffn_in=take.linear(their_names["ffn_in"], 2 * I if pre_norm else I, H, mlp_bias),
            ffn_out=take.linear(their_names["ffn_out"], H, I, mlp_bias),
            ffn_norm=take.norm(their_names["ffn_norm"], H, norm_bias),
        ))
    # The pooler is optional (BertModel(add_pooling_layer=False)) but all-or-nothing.
    pooler = family.pooler
    has_pooler = pooler is not None and any(f"{pooler}.{kind}" in encoder for kind in ("weight", "bias"))
    final_norm = take.norm(family.final_norm, H, norm_bias) if family.final_norm else None
    relative_bias = (take.tensor(family.relative_bias, (config.relative_attention_num_buckets,
                                                       config.num_attention_heads))
                     if family.relative_bias is not None else None)
    weights = EncoderWeights(embeddings, tuple(layers), take.linear(pooler, H, H) if has_pooler else None,
                             relative_bias=relative_bias, final_norm=final_norm)

    # A model built with type_vocab_size=0 still saves an empty [0, H] table: nothing to take from it.
    token_type_name = family.embeddings.get("token_type")
    empty_tt = encoder.get(token_type_name)
    if config.type_vocab_size == 0 and empty_tt is not None and empty_tt.numel() == 0:
        encoder.pop(token_type_name)
    unexpected = [take.shown(name) for name in encoder]

    if take.missing or take.misshaped or unexpected:
        raise _mismatch(config, head, [("missing", take.missing), ("mis-shaped", take.misshaped),
                                       ("unexpected", unexpected)])
    return weights, head


def _size_contradictions(tensors, config, family, shown) -> list[str]:
    """Each config size the checkpoint's tensors contradict, as "field=value, but NAME is [shape]": the
    layer count (more layers than the checkpoint holds) and the widths read off the embedding tables and
    layer 0. Sizes of tensors that are absent are left to the missing-tensor check."""
    root = family.layer_root + "."
    indices = {int(index) for name in tensors if name.startswith(root)
               for index in [name[len(root):].split(".", 1)[0]] if index.isdigit()}
    found = []
    layers_held = max(indices) + 1 if indices else 0
    if config.num_hidden_layers > layers_held:
        holds = (f"its layers stop at {shown(f'{root}{layers_held - 1}')}.* ({layers_held} layers)" if indices
                 else f"it holds no {shown(root + '0')}.* tensors")
        found.append(f"{_config_key(family, 'num_hidden_layers')}={config.num_hidden_layers}, but {holds}")
    width_field = "embedding_size" if config.embedding_size is not None else "hidden_size"
    first_layer = f"{root}0."
    # Fused QKV and GeGLU weights are taller than H and I: read their widths off the other axis.
    hidden = ("q", 0) if "q" in family.layer else ("qkv", 1)
    intermediate = ("ffn_in", 0) if family.layer_style != _PRE_NORM else ("ffn_out", 1)
    sizes = [("vocab_size", family.embeddings["word"], 0), (width_field, family.embeddings["word"], 1),
             ("hidden_size", first_layer + family.layer[hidden[0]] + ".weight", hidden[1]),
             ("intermediate_size", first_layer + family.layer[intermediate[0]] + ".weight", intermediate[1])]
    if "position" in family.embeddings:
        sizes.append(("max_position_embeddings", family.embeddings["position"], 0))
    if config.type_vocab_size and "token_type" in family.embeddings:
        sizes.append(("type_vocab_size", family.embeddings["token_type"], 0))
    for field, name, dim in sizes:
        tensor, value = tensors.get(name), getattr(config, field)
        if tensor is not None and tensor.dim() > dim and tensor.shape[dim] != value:
            found.append(f"{_config_key(family, field)}={value}, but {shown(name)} is {list(tensor.shape)}")
    return found


def _config_key(family, field) -> str:
    """The family's config.json name for our config field (DistilBERT's hidden_size is "dim")."""
    return family.config_keys.get(field, field)


def _mismatch(config, head, sections, separator=", ") -> ValueError:
    """One error for a checkpoint that does not fit its config: each (title, problems) section with its count
    and at most a few of its problems (joined by `separator`: "; " between sentences with commas of their
    own), and what was set aside as task heads."""
    lines = [f"checkpoint does not match the config ({_describe(config)}):"]
    for title, found in sections:
        if found:
            lines.append(f"  {title} ({len(found)}): {_few(found, separator)}")
    if head:
        lines.append(f"  ({len(head)} tensor(s) outside the encoder were set aside: {_few(list(head))})")
    return ValueError(bounded("\n".join(lines)))


def _few(names, separator=", ", shown=_NAMES_SHOWN) -> str:
    more = f"{separator}... ({len(names) - shown} more)" if len(names) > shown else ""
    return separator.join(names[:shown]) + more


class _Taker:
    """Takes tensors out of a checkpoint's encoder tensors by name, checking each shape, and records what is
    missing or mis-shaped. A structure built while something is missing holds None there: convert_state_dict
    raises before it leaves."""

    def __init__(self, tensors, shown):
        self.tensors, self.shown = tensors, shown
        self.missing, self.misshaped = [], []

    def tensor(self, name, shape):
        tensor = self.tensors.pop(name, None)
        if tensor is None:
            self.missing.append(f"{self.shown(name)} {list(shape)}")
        elif tuple(tensor.shape) != shape:
            self.misshaped.append(f"{self.shown(name)}: expected {list(shape)}, got {list(tensor.shape)}")
            return None
        return tensor

    def linear(self, module, out_features, in_features, bias=True):
        return Linear(self.tensor(module + ".weight", (out_features, in_features)),
                      self.tensor(module + ".bias", (out_features,)) if bias else None)

    def norm(self, module, width, bias=True):
        return Norm(self.tensor(module + ".weight", (width,)),
                    self.tensor(module + ".bias", (width,)) if bias else None)


def _fuse(*projections: Linear) -> Linear | None:
    """One Linear computing each projection's outputs in turn (Q | K | V rows); None if any part is missing."""
    parts = [(p.weight, p.bias) for p in projections]
    if any(t is None for pair in parts for t in pair):
        return None
    return Linear(torch.cat([w for w, _ in parts]).contiguous(), torch.cat([b for _, b in parts]).contiguous())


def load_weights(
    path, config: BertConfig, dtype: torch.dtype | None = None
) -> tuple[EncoderWeights, dict[str, torch.Tensor]]:
    """read_state_dict + check_finite + convert_state_dict, casting floating-point tensors to `dtype` when
    given."""
    state_dict = read_state_dict(path)
    check_finite(state_dict, path)
    weights, head = convert_state_dict(state_dict, config)
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        weights = weights.map_tensors(lambda tensor: tensor.to(dtype))
        head = {k: v.to(dtype) if v.is_floating_point() else v for k, v in head.items()}
    return weights, head


def _modern_layer_norm_name(name: str) -> str:
    # Checkpoints converted from the original TensorFlow BERT name LayerNorm parameters gamma/beta.
    if name.endswith("LayerNorm.gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith("LayerNorm.beta"):
        return name[: -len("beta")] + "bias"
    return name


def _describe(config: BertConfig) -> str:
    return (
        f"model_type={config.model_type}, vocab_size={config.vocab_size}, hidden_size={config.hidden_size}, "
        f"num_hidden_layers={config.num_hidden_layers}, intermediate_size={config.intermediate_size}, "
        f"max_position_embeddings={config.max_position_embeddings}, type_vocab_size={config.type_vocab_size}"
    )
