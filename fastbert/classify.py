"""Classifier: sequence classification (CrossEncoder rerankers, {Bert,Roberta,...}ForSequenceClassification
folders) on the engine's padding-free Encoder, without transformers at run time.

The data path of `forward`: tokens -> pack the real tokens once -> the encoder's layers on packed [T, H]
(fastbert.engine.model.Encoder.forward_tokens, CUDA graphs included) -> each sequence's first real token
[B, H] -> the family's head (HEADS) in fp32 -> logits [B, num_labels]. Nothing is scattered back to
[B, S, H].

`predict` is sentence-transformers' CrossEncoder.predict: the same inputs (a string, one (a, b) pair, or a
list of pairs), the same truncation (the folder's tokenizer limit, capped by the position table) and the
same default activation (the folder's configured activation_fn, else Sigmoid for one label, else Identity).
"""

import importlib
import json
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.families import family_of
from fastbert.checkpoint.hub import resolve_model_path
from fastbert.checkpoint.tokenizer import Tokenizer
from fastbert.checkpoint.weights import load_weights
from fastbert.engine.model import Encoder
from fastbert.engine.packing import pack_inputs
from fastbert.errors import bounded
from fastbert.jsonio import read_json

__all__ = ["HEADS", "Classifier", "Dense", "Head"]


@dataclass(frozen=True)
class Dense:
    """A Linear of the head, by its checkpoint name (without .weight/.bias); `to_labels`: it maps onto the
    labels (num_labels rows), else onto the hidden width."""

    name: str
    to_labels: bool = False


@dataclass(frozen=True)
class Head:
    """A family's classification head as transformers computes it at inference (dropout is the identity).

    pooling: "pooler" (the encoder's own pooler, tanh(dense(first real token)): BERT) or "first" (the first
    real token itself). steps: Dense layers and activation functions, applied in order."""

    pooling: str
    steps: tuple


# transformers' RobertaClassificationHead (XLM-R's and CamemBERT's are copies of it): tanh between two Linears.
_ROBERTA_HEAD = Head("first", (Dense("classifier.dense"), torch.tanh, Dense("classifier.out_proj", to_labels=True)))

# model_type -> its head. ModernBERT's (head.dense -> act -> head.norm, cls or mean pooling) is not a row yet:
# its folders are refused by name.
HEADS = {
    # BertForSequenceClassification: classifier(pooler_output).
    "bert": Head("pooler", (Dense("classifier", to_labels=True),)),
    "roberta": _ROBERTA_HEAD,
    "xlm-roberta": _ROBERTA_HEAD,
    "camembert": _ROBERTA_HEAD,
    # DistilBertForSequenceClassification: nn.ReLU between pre_classifier and classifier.
    "distilbert": Head("first", (Dense("pre_classifier"), F.relu, Dense("classifier", to_labels=True))),
    # ElectraClassificationHead: get_activation("gelu"), the exact erf GELU, where BERT would use tanh.
    "electra": Head("first", (Dense("classifier.dense"), F.gelu, Dense("classifier.out_proj", to_labels=True))),
    # MPNetClassificationHead: RoBERTa's layout.
    "mpnet": _ROBERTA_HEAD,
}


class Classifier:
    """A sequence-classification model: `forward` gives logits, `predict` CrossEncoder.predict's scores.
    Load with `Classifier.from_pretrained(folder or hub id)`."""

    def __init__(self, encoder, head, head_tensors, *, id2label=None, tokenizer=None, max_length=None,
                 default_activation=None, do_lower_case=False, token_types=True):
        """encoder: an engine Encoder; head: its HEADS row; head_tensors: the checkpoint's tensors outside the
        encoder (load_weights' second value); default_activation None: CrossEncoder's default."""
        self.encoder = encoder
        self.token_types = token_types
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.do_lower_case = do_lower_case
        self._layers, self.num_labels = _load_head(encoder, head, head_tensors)
        self.id2label = _labels(id2label, self.num_labels, encoder.path)
        # CrossEncoder's default where the folder configures none.
        if default_activation is None:
            default_activation = torch.nn.Sigmoid() if self.num_labels == 1 else torch.nn.Identity()
        self.default_activation = default_activation

    @property
    def path(self):
        return self.encoder.path

    @property
    def config(self):
        return self.encoder.config

    @property
    def device(self):
        return self.encoder.device

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None, backend="auto", max_length=None):
        """Load a sequence-classification folder (config.json with a supported model_type, its weights with
        the task head, a tokenizer), or a Hugging Face Hub id. dtype/device/backend: as
        fastbert.FastBertModel.from_pretrained. max_length: truncate to fewer tokens than the folder says
        (as CrossEncoder(max_length=...)); never more than the position table serves."""
        path = resolve_model_path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder not found: {path} is a file, not a checkpoint folder")
        raw_config = read_json(path / "config.json", default={})
        config = BertConfig.from_pretrained(path)
        _check_modules(path)
        head = HEADS.get(config.model_type)
        if head is None:
            raise ValueError(f"{path}: no classification head is known for model_type={config.model_type!r}; "
                             f"expected one of {list(HEADS)}")
        weights, head_tensors = load_weights(path, config)
        encoder = Encoder(config, weights, device=device, dtype=dtype, backend=backend, path=path)
        tokenizer = Tokenizer.from_pretrained(path, max_length=max_length)
        limit = tokenizer.max_length  # max_length, else tokenizer_config's model_max_length; capped by the positions
        if max_length is None and tokenizer.max_seq_length is not None:  # a CrossEncoder's sentence_bert_config.json
            limit = min(limit, tokenizer.max_seq_length) if limit is not None else tokenizer.max_seq_length
        settings = read_json(path / "sentence_bert_config.json", default={})
        return cls(encoder, head, head_tensors, id2label=raw_config.get("id2label"), tokenizer=tokenizer,
                   max_length=limit, default_activation=_configured_activation(path, raw_config),
                   do_lower_case=settings.get("do_lower_case") is True,
                   token_types=_uses_token_types(path, config.model_type))

    def __repr__(self):
        return (f"{type(self).__name__}(model_type={self.config.model_type!r}, num_labels={self.num_labels}, "
                f"max_length={self.max_length}, encoder={self.encoder!r})")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids (+ attention_mask, token_type_ids) [B, S], on the CPU or the model's device ->
        logits [B, num_labels] float32 on the model's device."""
        where = input_ids.device if isinstance(input_ids, torch.Tensor) else self.device
        packing, ids, positions, types = pack_inputs(self.config, where, input_ids, attention_mask, token_type_ids,
                                                     to_device=self.device)
        if packing.batch_size == 0:
            return torch.zeros(0, self.num_labels, dtype=torch.float32, device=self.device)
        if packing.num_tokens == 0:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: every sequence needs a token")
        hidden = self.encoder.forward_tokens(packing, ids, positions, types)
        x = packing.first_tokens(hidden).float()
        for layer in self._layers:
            x = layer(x)
        return x

    def predict(self, sentences, batch_size=32, activation_fn=None, apply_softmax=False, convert_to_numpy=True,
                convert_to_tensor=False):
        """CrossEncoder.predict: scores of `sentences`, a list of (a, b) pairs (or of 1-tuples (a,): single
        texts), one pair [a, b], or one string. A lone pair or string gives a scalar (an array [num_labels]
        for several labels), a list gives [N] ([N, num_labels]).

        activation_fn: applied to the logits (default: `default_activation`); then [N, 1] is squeezed to [N],
        and apply_softmax turns each row of several labels into probabilities. Returns a NumPy float32
        array (convert_to_numpy), one tensor (convert_to_tensor), else a list of tensors."""
        single, items = _parse_sentences(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        logits = torch.empty(len(items), self.num_labels, dtype=torch.float32, device=self.device)
        for pairs in (False, True):  # single texts and pairs tokenize differently: each in batches of its own
            group = [i for i, (_, second) in enumerate(items) if (second is not None) == pairs]
            # Longest first, as CrossEncoder orders them: batches of similar lengths waste least attention.
            group.sort(key=lambda i: -sum(len(t) for t in items[i] if t is not None))
            for start in range(0, len(group), batch_size):
                rows = group[start:start + batch_size]
                logits[rows] = self._logits([items[i] for i in rows], pairs)
        scores = (self.default_activation if activation_fn is None else activation_fn)(logits)
        if self.num_labels == 1 and scores.dim() > 1:
            scores = scores.squeeze(-1)
        if apply_softmax and scores.dim() > 1:
            scores = torch.softmax(scores, dim=1)
        if convert_to_tensor:
            result = scores
        elif convert_to_numpy:
            result = scores.float().cpu().numpy()
        else:
            result = list(scores)
        return result[0] if single else result

    def _logits(self, items, pairs):
        lower = str.lower if self.do_lower_case else str
        firsts = [lower(first) for first, _ in items]
        seconds = [lower(second) for _, second in items] if pairs else None
        batch = self.tokenizer(firsts, seconds, max_length=self.max_length)
        types = batch["token_type_ids"] if self.token_types else None
        return self.forward(batch["input_ids"], batch["attention_mask"], types)


# The tokenizer classes whose model_input_names hold token_type_ids (transformers' own class attribute): a
# pair's second segment gets type 1 only through them. RoBERTa's, DistilBERT's and the generic
# PreTrainedTokenizerFast return no types, and the model then sees type 0 everywhere.
_TOKEN_TYPE_TOKENIZERS = {"BertTokenizer", "ElectraTokenizer"}
# A folder whose tokenizer_config.json names no class gets AutoTokenizer's class for its model_type.
_TOKEN_TYPE_MODEL_TYPES = {"bert", "electra"}


def _uses_token_types(path, model_type):
    """Whether transformers' tokenizer for this folder returns token_type_ids, which CrossEncoder then
    passes to the model: tokenizer_config.json's model_input_names, else its tokenizer_class's."""
    settings = read_json(path / "tokenizer_config.json", default={})
    names = settings.get("model_input_names")
    if isinstance(names, list):
        return "token_type_ids" in names
    tokenizer_class = settings.get("tokenizer_class")
    if isinstance(tokenizer_class, str):
        return tokenizer_class.removesuffix("Fast") in _TOKEN_TYPE_TOKENIZERS
    return model_type in _TOKEN_TYPE_MODEL_TYPES


def _load_head(encoder, head, tensors):
    """The head's layers as callables on [B, H] float32 tensors, on the encoder's device, and num_labels.
    Every head tensor is checked for presence and shape, and none may be left over."""
    hidden, path = encoder.config.hidden_size, encoder.path
    tensors = dict(tensors)
    final = [step for step in head.steps if isinstance(step, Dense) and step.to_labels]
    labels_weight = tensors.get(final[0].name + ".weight")
    num_labels = labels_weight.shape[0] if labels_weight is not None and labels_weight.dim() == 2 else None
    missing, misshaped, layers = [], [], []
    if head.pooling == "pooler":
        if encoder.weights.pooler is None:
            family = family_of(encoder.config.model_type)
            missing.append(f"{family.prefix}.{family.pooler}.weight/.bias [{hidden}, {hidden}] (the pooler)")
        else:
            pooler = _fp32(encoder.weights.pooler.weight), _fp32(encoder.weights.pooler.bias)
            layers.append(lambda x, w=pooler[0], b=pooler[1]: torch.tanh(F.linear(x, w, b)))
    for step in head.steps:
        if not isinstance(step, Dense):
            layers.append(step)
            continue
        rows = (num_labels or 1) if step.to_labels else hidden
        taken = []
        for kind, shape in (("weight", (rows, hidden)), ("bias", (rows,))):
            tensor = tensors.pop(f"{step.name}.{kind}", None)
            if tensor is None:
                missing.append(f"{step.name}.{kind} {list(shape)}")
            elif tuple(tensor.shape) != shape:
                misshaped.append(f"{step.name}.{kind}: expected {list(shape)}, got {list(tensor.shape)}")
            taken.append(tensor)
        weight, bias = (_fp32(tensor, encoder.device) for tensor in taken)
        layers.append(lambda x, w=weight, b=bias: F.linear(x, w, b))
    if missing or misshaped or tensors:
        problems = [(title, names) for title, names in (("missing", missing), ("mis-shaped", misshaped),
                                                       ("unexpected", sorted(tensors))) if names]
        found = "; ".join(f"{title} ({len(names)}): {', '.join(names[:6])}" for title, names in problems)
        raise ValueError(bounded(
            f"{path}: not a {encoder.config.model_type} sequence-classification checkpoint (the head "
            f"{_describe(head)} does not match): {found}"))
    return layers, num_labels


def _fp32(tensor, device=None):
    if tensor is None:
        return None
    return tensor.detach().to(device=device or tensor.device, dtype=torch.float32).contiguous()


def _describe(head):
    names = ["pooler"] if head.pooling == "pooler" else ["first token"]
    names += [step.name if isinstance(step, Dense) else step.__name__ for step in head.steps]
    return " -> ".join(names)


def _labels(id2label, num_labels, path):
    """config.json's id2label as {int: str}, or transformers' LABEL_i names where it has none."""
    if id2label is None:
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    try:
        labels = {int(key): str(value) for key, value in id2label.items()}
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(bounded(f"{path}: id2label must map label ids to names, got {id2label!r}")) from err
    if sorted(labels) != list(range(num_labels)):
        raise ValueError(bounded(f"{path}: id2label names labels {sorted(labels)}, but the classifier has "
                                 f"{num_labels} output(s)"))
    return labels


def _check_modules(path):
    """A folder with modules.json must be a CrossEncoder's: one Transformer module at the folder's root."""
    file = path / "modules.json"
    if not file.is_file():
        return
    modules = read_json(file, expect=list)
    kinds = [str(m.get("type", "?")).rsplit(".", 1)[-1] if isinstance(m, dict) else _shown(m) for m in modules]
    if kinds != ["Transformer"] or modules[0].get("path", "") not in ("", "."):
        raise ValueError(bounded(
            f"{path}: modules.json lists {kinds}, not a CrossEncoder (one Transformer module at the folder's "
            "root); a sentence-embedding folder loads with fastbert.from_pretrained"))
    task = read_json(path / "sentence_bert_config.json", default={}).get("transformer_task", "sequence-classification")
    if task != "sequence-classification":
        raise ValueError(f"{path}: transformer_task={task!r}, not 'sequence-classification': no classification head")


def _configured_activation(path, config):
    """The activation CrossEncoder.predict applies by default when the folder names one: the activation_fn
    of config_sentence_transformers.json (read by sentence-transformers for folders with modules.json), else
    config.json's sentence_transformers.activation_fn or its older sbert_ce_default_activation_function; None
    where it names none. Like CrossEncoder without trust_remote_code, only torch classes are built."""
    names = []
    if (path / "modules.json").is_file():
        settings = read_json(path / "config_sentence_transformers.json", default={})
        if settings.get("default_prompt_name") is not None:
            # CrossEncoder would prepend that prompt to every input; predict here takes none.
            raise ValueError(bounded(f"{path}: default_prompt_name={settings['default_prompt_name']!r} is not "
                                     "supported: Classifier.predict applies no prompts"))
        names.append(settings.get("activation_fn"))
    settings = config.get("sentence_transformers")
    if isinstance(settings, dict) and "activation_fn" in settings:
        names.append(settings["activation_fn"])
    else:
        names.append(config.get("sbert_ce_default_activation_function"))
    for name in names:
        if name is None:
            continue
        activation = _torch_activation(name, path)
        if activation is not None:
            return activation
    return None


def _torch_activation(name, path):
    if not isinstance(name, str) or not name.startswith("torch."):
        warnings.warn(f"{path}: activation function {json.dumps(name)} is not a torch class; using the default, "
                      "as CrossEncoder does without trust_remote_code", stacklevel=3)
        return None
    module, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)()
    except (ImportError, AttributeError, TypeError) as err:
        raise ValueError(bounded(f"{path}: activation function {name!r} cannot be built: {err}")) from err


def _parse_sentences(sentences):
    """(single, [(a, b or None), ...]) with CrossEncoder.predict's reading: a string is one text, a list or
    tuple of strings is one pair, any other list holds one (a, b) pair or (a,) text per entry."""
    def pair_of(entry, where):
        if isinstance(entry, str):
            return entry, None
        if isinstance(entry, (list, tuple)) and len(entry) in (1, 2) and all(isinstance(t, str) for t in entry):
            return entry[0], entry[1] if len(entry) == 2 else None
        raise TypeError(bounded(f"{where} must be a string, an (a, b) pair of strings or an (a,) 1-tuple, got "
                                f"{_shown(entry)}"))

    if isinstance(sentences, str):
        return True, [(sentences, None)]
    if not isinstance(sentences, (list, tuple)):
        raise TypeError(f"sentences must be a string, a pair of strings or a list of pairs, got "
                        f"{type(sentences).__name__}")
    if not sentences:
        raise ValueError("sentences is empty: give at least one text or pair")
    if isinstance(sentences[0], str):  # as CrossEncoder: a list that starts with a string is one pair
        if len(sentences) != 2 or not isinstance(sentences[1], str):
            raise ValueError(bounded(
                f"a list of strings is read as one (a, b) pair, as CrossEncoder.predict reads it, but got "
                f"{_shown(sentences)}; score several texts as [(text,), ...] and several pairs as [(a, b), ...]"))
        return True, [tuple(sentences)]
    return False, [pair_of(entry, f"sentences[{i}]") for i, entry in enumerate(sentences)]


def _shown(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
