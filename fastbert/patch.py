"""Drop-in acceleration of transformers / sentence-transformers BERT-family models.

`optimize(model)` finds the model's base encoder (BertModel, RobertaModel, XLMRobertaModel, CamembertModel,
DistilBertModel, ElectraModel, MPNetModel, ModernBertModel) through the family table (fastbert/checkpoint/families.py,
keyed on the config's model_type) and sets that module's `forward` (on the instance only) to a `FastForward`, which runs
fastbert's padding-free encoder; the model's own heads (classification, token classification, question
answering, masked LM, pre-training, next-sentence prediction, multiple choice, ...), its `forward` and
sentence-transformers' `encode` run unchanged on top. `restore(model)` removes the instance attribute,
which gives back the original method exactly: no module is rebuilt or moved.

The FastForward holds the module it serves as data, not in a closure: `copy.deepcopy` and pickling
(`torch.save`) carry it over to the copy, which then builds its fastbert encoder from its own weights."""

import functools
import inspect
from dataclasses import fields

import torch

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.families import FAMILIES
from fastbert.checkpoint.weights import convert_state_dict
from fastbert.engine.model import Encoder
from fastbert.errors import bounded

# Models that hold their transformers model below the top, as an attribute path. A transformers model
# itself needs no entry: its config's model_type names its family (fastbert/checkpoint/families.py), and the family
# says where task models keep the encoder (`prefix`) and which class that encoder is (`base_class`).
WRAPPERS = {
    "SentenceTransformer": "0.auto_model",
    # A reranker: its transformers model (a *ForSequenceClassification), then resolved through its family.
    "CrossEncoder": "model",
}

# Arguments fastbert computes itself; any other argument of the encoder's forward must be unset (None or
# False) for fastbert to answer, else transformers' own forward runs.
_HANDLED = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "output_hidden_states", "return_dict")


def _find_encoder(model):
    """The model's base encoder (a BertModel, RobertaModel, DistilBertModel, ...) and its family row."""
    inner = model
    for attribute in filter(None, WRAPPERS.get(type(model).__name__, "").split(".")):
        inner = getattr(inner, attribute)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        what = f"model_type={model_type!r}" if model_type is not None else "no transformers config"
        name = type(model).__name__
        subject = name if inner is model else f"this {name}: the {name} wraps a {type(inner).__name__}"
        raise TypeError(bounded(f"fastbert.optimize does not support {subject} ({what}); supported: transformers "
                                f"models of model_type {', '.join(FAMILIES)}, and {', '.join(WRAPPERS)} wrapping one"))
    family = FAMILIES[model_type]
    encoder = inner if type(inner).__name__ == family.base_class else getattr(inner, family.prefix, None)
    if type(encoder).__name__ != family.base_class:
        raise TypeError(f"{type(model).__name__} keeps no {family.base_class} at .{family.prefix}: fastbert "
                        f"accelerates the {family.base_class} encoder of {model_type} models")
    return encoder, family


@functools.cache
def _output_class(name):
    """transformers' output class `name` and whether it has a pooler_output field."""
    import transformers.modeling_outputs

    output_class = getattr(transformers.modeling_outputs, name)
    return output_class, "pooler_output" in {f.name for f in fields(output_class)}


@functools.cache
def _forward_signature(encoder_class):
    """The signature of the class's own forward, without `self`: positional calls then mean what they mean
    to transformers (DistilBERT's third argument is inputs_embeds, BERT's token_type_ids)."""
    signature = inspect.signature(encoder_class.forward)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _wants_gradients(module):
    return torch.is_grad_enabled() and any(parameter.requires_grad for parameter in module.parameters())


class FastForward:
    """The forward of an optimized encoder module: fastbert's encoder where it computes what transformers
    would, transformers' own forward everywhere else.

    The fastbert encoder is built from the module's weights at optimize() and again whenever the module's
    device or dtype has changed (.half(), .to(...)), or when this object arrives on a copy (deepcopy,
    pickle: the copy's weights are its own, and the engine is not copied with it)."""

    def __init__(self, module, backend, dtype):
        self.module, self.backend, self.dtype = module, backend, dtype
        parameter = next(module.parameters())
        # Built now, so that an unsupported config, backend or dtype is optimize()'s error.
        self.fastbert_encoder, self._built_for = self._build(parameter), (parameter.device, parameter.dtype)

    def __getstate__(self):
        return {"module": self.module, "backend": self.backend, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__dict__.update(state, fastbert_encoder=None, _built_for=None)

    def __repr__(self):
        return f"{type(self).__name__}({type(self.module).__name__}, backend={self.backend!r}, dtype={self.dtype})"

    def current_encoder(self) -> Encoder:
        """The fastbert encoder of the module's weights where they are now (device, dtype)."""
        parameter = next(self.module.parameters())
        placed = (parameter.device, parameter.dtype)
        if self.fastbert_encoder is None or self._built_for != placed:
            self.fastbert_encoder = None  # the old engine's weights go before the new ones are made
            try:
                self.fastbert_encoder = self._build(parameter)
            except (TypeError, ValueError) as err:
                raise type(err)(bounded(
                    f"this optimized {type(self.module).__name__} now holds {parameter.dtype} weights on "
                    f"{parameter.device}, which fastbert cannot run ({err}): call fastbert.restore() on the model "
                    "to run transformers' own code, or move it back")) from err
            self._built_for = placed
        return self.fastbert_encoder

    def _build(self, parameter):
        config = BertConfig.from_dict(self.module.config.to_dict())
        weights, _heads = convert_state_dict(self.module.state_dict(), config)
        return Encoder(config, weights, device=parameter.device, dtype=self.dtype or parameter.dtype,
                       backend=self.backend)

    def __call__(self, *args, **kwargs):
        module = self.module
        original_forward = type(module).forward.__get__(module)
        # Anything fastbert does not compute runs through transformers, exactly as before: gradients (its
        # kernels have no backward), training with dropout, custom embeddings, head masks, attention maps,
        # 3-D/4-D masks, cross-attention, caches. use_cache=False and the like are the encoder's default.
        if module.training or _wants_gradients(module):
            return original_forward(*args, **kwargs)
        signature = _forward_signature(type(module))
        try:
            arguments = dict(signature.bind(*args, **kwargs).arguments)
        except TypeError:  # a call transformers would refuse is refused the same way
            return original_forward(*args, **kwargs)
        for name, parameter in signature.parameters.items():
            if parameter.kind == inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
        if "token_type_ids" not in signature.parameters:
            arguments.pop("token_type_ids", None)  # DistilBERT takes none; transformers ignores them too
        mask = arguments.get("attention_mask")
        # Rotary families rotate by each token's index in its sequence; other position ids go to transformers.
        rotary_positions = FAMILIES[module.config.model_type].positions == "rotary" and (
            arguments.get("position_ids") is not None)
        if arguments.get("input_ids") is None or (mask is not None and mask.dim() != 2) or rotary_positions or any(
                value is not None and value is not False for name, value in arguments.items() if name not in _HANDLED):
            return original_forward(*args, **kwargs)
        config = module.config
        output_hidden_states = arguments.get("output_hidden_states")
        want_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        out = self.current_encoder()(arguments["input_ids"], mask, arguments.get("token_type_ids"),
                                     arguments.get("position_ids"), output_hidden_states=bool(want_states))
        output_class, has_pooler_field = _output_class(FAMILIES[config.model_type].output)
        values = {"last_hidden_state": out.last_hidden_state, "hidden_states": out.hidden_states}
        if has_pooler_field:
            values["pooler_output"] = out.pooler_output if getattr(module, "pooler", None) is not None else None
        result = output_class(**values)
        return_dict = arguments.get("return_dict")
        # config.return_dict, not the deprecated config.use_return_dict property, which logs a warning.
        use_dict = return_dict if return_dict is not None else getattr(config, "return_dict", True)
        return result if use_dict else result.to_tuple()


def optimize(model, backend="auto", dtype=None):
    """Accelerate `model` in place and return it. Supported: any transformers model of a supported
    model_type (bert, roberta, xlm-roberta, camembert, distilbert, electra, mpnet, modernbert) that keeps its
    encoder as
    transformers' task models do: the base model itself, *ForSequenceClassification,
    *ForTokenClassification, *ForQuestionAnswering, *ForMaskedLM, *ForMultipleChoice,
    BertForPreTraining, BertForNextSentencePrediction, ...; and a sentence-transformers
    SentenceTransformer or CrossEncoder wrapping one.

    The encoder runs on the model's device, in the model's dtype unless `dtype` is given; a later
    .half() / .to(...) of the model is followed at the next call. Outputs at padded positions are zero
    (transformers computes values there that nothing should read). Where gradients are wanted (grad mode
    on and an encoder parameter requiring grad) and in training mode, transformers' own forward runs.
    Weights are read at optimize() (and after a move or cast): after changing the model's weights in
    place, call restore() and optimize()."""
    encoder, _family = _find_encoder(model)
    if not isinstance(vars(encoder).get("forward"), FastForward):
        encoder.forward = FastForward(encoder, backend, dtype)
    return model


def restore(model):
    """Undo optimize(): the model's encoder runs transformers' own forward again. Returns the model."""
    encoder, _ = _find_encoder(model)
    if not isinstance(vars(encoder).get("forward"), FastForward):
        raise ValueError(f"this {type(model).__name__} was not optimized by fastbert.optimize")
    del encoder.forward
    return model


def is_optimized(model):
    return isinstance(vars(_find_encoder(model)[0]).get("forward"), FastForward)


def fastbert_encoder(model) -> Encoder:
    """The fastbert Encoder an optimized model runs now (built for the model's current device and dtype)."""
    encoder, _ = _find_encoder(model)
    forward = vars(encoder).get("forward")
    if not isinstance(forward, FastForward):
        raise ValueError(f"this {type(model).__name__} was not optimized by fastbert.optimize")
    return forward.current_encoder()
