"""Drop-in acceleration of transformers / sentence-transformers BERT models.

`optimize(model)` finds the model's BertModel through one table and replaces that module's
`forward` (on the instance only) with fastbert's padding-free encoder; the model's own heads, its
`forward` and sentence-transformers' `encode` run unchanged on top. `restore(model)` removes the
instance attribute, which gives back the original method exactly: no module is rebuilt or moved."""

from .config import BertConfig
from .model import FastBertModel
from .weights import convert_state_dict

# Where each supported model class keeps its BertModel, as an attribute path ("" = the model itself).
ENCODER_PATHS = {
    "BertModel": "",
    "BertForSequenceClassification": "bert",
    "BertForTokenClassification": "bert",
    "BertForQuestionAnswering": "bert",
    "BertForMaskedLM": "bert",
    "SentenceTransformer": "0.auto_model",
    # A reranker: its transformers model (a *ForSequenceClassification), resolved again through this table.
    "CrossEncoder": "model",
}

_STATE = "_fastbert_encoder"


def _find_encoder(model):
    class_name = type(model).__name__
    if class_name not in ENCODER_PATHS:
        raise TypeError(f"fastbert.optimize does not support {class_name}; supported: {', '.join(ENCODER_PATHS)}")
    encoder = model
    for attribute in filter(None, ENCODER_PATHS[class_name].split(".")):
        encoder = getattr(encoder, attribute)
    if encoder is not model and ENCODER_PATHS.get(type(encoder).__name__):
        return _find_encoder(encoder)  # a wrapper's model, which keeps its encoder one level further down
    if type(encoder).__name__ != "BertModel":
        raise TypeError(f"{class_name} wraps a {type(encoder).__name__}, not a BertModel: fastbert runs BERT only")
    return encoder


def _fast_forward(encoder, fast, original_forward):
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    def forward(input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        # Anything fastbert does not compute (training with dropout, custom embeddings, head masks,
        # attention maps, 3-D/4-D masks, cross-attention) runs through transformers, exactly as before.
        unsupported = (
            encoder.training or input_ids is None or inputs_embeds is not None or head_mask is not None
            or output_attentions or (attention_mask is not None and attention_mask.dim() != 2)
            # Extra arguments (encoder_hidden_states, past_key_values, ...) only matter when set;
            # use_cache=False and the like are the encoder's default.
            or any(value is not None and value is not False for value in kwargs.values())
        )
        if unsupported:
            return original_forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                    position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                                    output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                    return_dict=return_dict, **kwargs)
        config = encoder.config
        want_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        out = fast(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=bool(want_states))
        result = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=out.last_hidden_state,
            pooler_output=out.pooler_output if encoder.pooler is not None else None,
            hidden_states=out.hidden_states,
        )
        # config.return_dict, not the deprecated config.use_return_dict property, which logs a warning.
        use_dict = return_dict if return_dict is not None else getattr(config, "return_dict", True)
        return result if use_dict else result.to_tuple()

    return forward


def optimize(model, backend="auto", dtype=None):
    """Accelerate `model` in place and return it. Supported: transformers BertModel,
    BertFor{SequenceClassification,TokenClassification,QuestionAnswering,MaskedLM}, and a
    sentence-transformers SentenceTransformer or CrossEncoder whose transformer is BERT.

    The encoder runs on the model's device, in the model's dtype unless `dtype` is given. Outputs
    at padded positions are zero (transformers computes values there that nothing should read).
    Weights are read once, now: after changing the model's weights, call restore() and optimize()."""
    encoder = _find_encoder(model)
    if hasattr(encoder, _STATE):
        return model
    parameter = next(encoder.parameters())
    config = BertConfig.from_dict(encoder.config.to_dict())
    weights, _heads = convert_state_dict(encoder.state_dict(), config)
    fast = FastBertModel(config, weights, device=parameter.device, dtype=dtype or parameter.dtype, backend=backend)
    original_forward = encoder.forward
    setattr(encoder, _STATE, fast)
    encoder.forward = _fast_forward(encoder, fast, original_forward)
    return model


def restore(model):
    """Undo optimize(): the model's BertModel runs transformers' own forward again. Returns the model."""
    encoder = _find_encoder(model)
    if not hasattr(encoder, _STATE):
        raise ValueError(f"this {type(model).__name__} was not optimized by fastbert.optimize")
    del encoder.forward
    delattr(encoder, _STATE)
    return model


def is_optimized(model):
    return hasattr(_find_encoder(model), _STATE)
