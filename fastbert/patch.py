"""Drop-in acceleration of transformers / sentence-transformers BERT-family models.

`optimize(model)` finds the model's base encoder (BertModel, RobertaModel, XLMRobertaModel, CamembertModel,
DistilBertModel, ElectraModel) through the family table (fastbert/families.py, keyed on the config's
model_type) and replaces that module's `forward` (on the instance only) with fastbert's padding-free
encoder; the model's own heads (classification, token classification, question answering, masked LM,
pre-training, next-sentence prediction, multiple choice, ...), its `forward` and sentence-transformers'
`encode` run unchanged on top. `restore(model)` removes the instance attribute, which gives back the
original method exactly: no module is rebuilt or moved."""

import inspect
from dataclasses import fields

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.families import FAMILIES
from fastbert.checkpoint.weights import convert_state_dict
from fastbert.engine.model import Encoder

# Models that hold their transformers model below the top, as an attribute path. A transformers model
# itself needs no entry: its config's model_type names its family (fastbert/families.py), and the family
# says where task models keep the encoder (`prefix`) and which class that encoder is (`base_class`).
WRAPPERS = {
    "SentenceTransformer": "0.auto_model",
    # A reranker: its transformers model (a *ForSequenceClassification), then resolved through its family.
    "CrossEncoder": "model",
}

_STATE = "_fastbert_encoder"
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
        raise TypeError(f"fastbert.optimize does not support {subject} ({what}); supported: transformers "
                        f"models of model_type {', '.join(FAMILIES)}, and {', '.join(WRAPPERS)} wrapping one")
    family = FAMILIES[model_type]
    encoder = inner if type(inner).__name__ == family.base_class else getattr(inner, family.prefix, None)
    if type(encoder).__name__ != family.base_class:
        raise TypeError(f"{type(model).__name__} keeps no {family.base_class} at .{family.prefix}: fastbert "
                        f"accelerates the {family.base_class} encoder of {model_type} models")
    return encoder, family


def _output_class(family):
    import transformers.modeling_outputs

    return getattr(transformers.modeling_outputs, family.output)


def _fast_forward(encoder, family, fast, original_forward):
    signature = inspect.signature(original_forward)
    output_class = _output_class(family)
    has_pooler_field = "pooler_output" in {f.name for f in fields(output_class)}

    def forward(*args, **kwargs):
        # Bound by the encoder's own signature, so positional calls mean what they mean to transformers
        # (DistilBERT's third argument is inputs_embeds, BERT's token_type_ids); a call transformers would
        # refuse is refused the same way.
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return original_forward(*args, **kwargs)
        arguments = dict(bound.arguments)
        for name, parameter in signature.parameters.items():
            if parameter.kind == inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
        if "token_type_ids" not in signature.parameters:
            arguments.pop("token_type_ids", None)  # DistilBERT takes none; transformers ignores them too
        mask = arguments.get("attention_mask")
        # Anything fastbert does not compute (training with dropout, custom embeddings, head masks,
        # attention maps, 3-D/4-D masks, cross-attention, caches) runs through transformers, exactly as
        # before. use_cache=False and the like are the encoder's default.
        unsupported = (
            encoder.training or arguments.get("input_ids") is None or (mask is not None and mask.dim() != 2)
            or any(value is not None and value is not False
                   for name, value in arguments.items() if name not in _HANDLED)
        )
        if unsupported:
            return original_forward(*args, **kwargs)
        config = encoder.config
        output_hidden_states = arguments.get("output_hidden_states")
        want_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        out = fast(arguments["input_ids"], mask, arguments.get("token_type_ids"), arguments.get("position_ids"),
                   output_hidden_states=bool(want_states))
        values = {"last_hidden_state": out.last_hidden_state, "hidden_states": out.hidden_states}
        if has_pooler_field:
            values["pooler_output"] = out.pooler_output if getattr(encoder, "pooler", None) is not None else None
        result = output_class(**values)
        return_dict = arguments.get("return_dict")
        # config.return_dict, not the deprecated config.use_return_dict property, which logs a warning.
        use_dict = return_dict if return_dict is not None else getattr(config, "return_dict", True)
        return result if use_dict else result.to_tuple()

    return forward


def optimize(model, backend="auto", dtype=None):
    """Accelerate `model` in place and return it. Supported: any transformers model of a supported
    model_type (bert, roberta, xlm-roberta, camembert, distilbert, electra) that keeps its encoder as
    transformers' task models do: the base model itself, *ForSequenceClassification,
    *ForTokenClassification, *ForQuestionAnswering, *ForMaskedLM, *ForMultipleChoice,
    BertForPreTraining, BertForNextSentencePrediction, ...; and a sentence-transformers
    SentenceTransformer or CrossEncoder wrapping one.

    The encoder runs on the model's device, in the model's dtype unless `dtype` is given. Outputs
    at padded positions are zero (transformers computes values there that nothing should read).
    Weights are read once, now: after changing the model's weights, call restore() and optimize()."""
    encoder, family = _find_encoder(model)
    if hasattr(encoder, _STATE):
        return model
    parameter = next(encoder.parameters())
    config = BertConfig.from_dict(encoder.config.to_dict())
    weights, _heads = convert_state_dict(encoder.state_dict(), config)
    fast = Encoder(config, weights, device=parameter.device, dtype=dtype or parameter.dtype, backend=backend)
    original_forward = encoder.forward
    setattr(encoder, _STATE, fast)
    encoder.forward = _fast_forward(encoder, family, fast, original_forward)
    return model


def restore(model):
    """Undo optimize(): the model's encoder runs transformers' own forward again. Returns the model."""
    encoder, _ = _find_encoder(model)
    if not hasattr(encoder, _STATE):
        raise ValueError(f"this {type(model).__name__} was not optimized by fastbert.optimize")
    del encoder.forward
    delattr(encoder, _STATE)
    return model


def is_optimized(model):
    return hasattr(_find_encoder(model)[0], _STATE)
