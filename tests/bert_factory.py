"""Random-weight checkpoints of the BERT family for tests: a transformers model saved to a folder
fastbert loads."""

import json

import torch

BERT_BASE_SHAPES = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)

# The base model class of each model_type, and the config keys a family names differently from BERT,
# written here independently of fastbert's own table (fastbert/families.py) so the tests check it.
BASE_CLASSES = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel",
                "camembert": "CamembertModel", "distilbert": "DistilBertModel", "electra": "ElectraModel",
                "mpnet": "MPNetModel"}
_RENAMED_KEYS = {"distilbert": {"hidden_size": "dim", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers",
                                "intermediate_size": "hidden_dim", "hidden_act": "activation"}}
# A tiny model of odd sizes per family (head_dim 32, the smallest the Triton attention kernel serves).
FAMILY_SETTINGS = dict(vocab_size=99, hidden_size=96, num_attention_heads=3, num_hidden_layers=2,
                       intermediate_size=37, max_position_embeddings=40)
_ROBERTA_EXTRA = dict(type_vocab_size=1, pad_token_id=1)
FAMILY_EXTRA = {"bert": dict(type_vocab_size=3), "roberta": _ROBERTA_EXTRA, "xlm-roberta": _ROBERTA_EXTRA,
                "camembert": _ROBERTA_EXTRA, "distilbert": dict(pad_token_id=0),
                "electra": dict(embedding_size=20, type_vocab_size=2), "mpnet": dict(pad_token_id=1)}


def family_settings(model_type, **overrides):
    """The tiny odd-sized settings for one family, with its own quirks (RoBERTa's pad id 1, ELECTRA's
    narrower embeddings) and any overrides."""
    return {**FAMILY_SETTINGS, **FAMILY_EXTRA[model_type], **overrides}


def random_hf_model(model_class="BertModel", *, seed=0, add_pooling_layer=True, **overrides):
    """A transformers model of any supported family with random weights (eval mode, eager attention).
    The family comes from the class (RobertaForMaskedLM: roberta). Small by default; `overrides` set
    config fields under BERT's names (hidden_size, ...), translated for families that rename them."""
    import transformers

    cls = getattr(transformers, model_class)
    model_type = cls.config_class.model_type
    settings = dict(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=96, max_position_embeddings=80, type_vocab_size=2)
    settings.update(overrides)
    renamed = _RENAMED_KEYS.get(model_type, {})
    if renamed:
        settings.pop("type_vocab_size", None)
    settings = {renamed.get(key, key): value for key, value in settings.items()}
    torch.manual_seed(seed)
    config = cls.config_class(**settings)
    config._attn_implementation = "eager"
    if not add_pooling_layer:
        model = cls(config, add_pooling_layer=False)
    else:
        model = cls(config)
    # Random LayerNorm parameters and biases too: default init (ones/zeros) would hide mix-ups.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def random_bert(folder, *, model_class="BertModel", seed=0, **overrides):
    """random_hf_model(...) saved to `folder` as model.safetensors + config.json, for fastbert to load."""
    model = random_hf_model(model_class, seed=seed, **overrides)
    model.save_pretrained(folder)
    return model


def random_batch(vocab_size, lengths, *, seq_len=None, type_vocab_size=2, left_pad=False, seed=0, pad_token_id=0):
    """input_ids, attention_mask, token_type_ids [B, S] for sequences of the given lengths; padded
    positions hold pad_token_id, real ones never do (as a tokenizer pads)."""
    generator = torch.Generator().manual_seed(seed)
    seq_len = seq_len or max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), seq_len), generator=generator)
    ids[ids == pad_token_id] = 0 if pad_token_id else 1
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left_pad:
            mask[row, seq_len - length:] = 1
        else:
            mask[row, :length] = 1
    ids = torch.where(mask.bool(), ids, pad_token_id)
    types = torch.randint(0, max(type_vocab_size, 1), (len(lengths), seq_len), generator=generator) * mask
    return ids, mask, types


def device_for(backend):
    """Where a backend's tests run: triton on the GPU when there is one (else the interpreter on CPU),
    torch on CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


class OnItsDevice:
    """A FastBertModel called with CPU tensors that runs on its own device and answers on CPU, so one
    test body serves the interpreter on a CPU machine and the kernels on a GPU."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        from fastbert.engine.outputs import EncoderOutput

        def move(value):
            return value.to(self.model.device) if isinstance(value, torch.Tensor) else value

        out = self.model(*map(move, args), **{name: move(value) for name, value in kwargs.items()})
        return EncoderOutput(
            last_hidden_state=out.last_hidden_state.cpu(),
            pooler_output=out.pooler_output.cpu() if out.pooler_output is not None else None,
            hidden_states=tuple(s.cpu() for s in out.hidden_states) if out.hidden_states is not None else None,
        )


def load_fastbert(path, backend, dtype=torch.float32, **kwargs):
    from fastbert import FastBertModel

    model = FastBertModel.from_pretrained(path, dtype=dtype, device=device_for(backend), backend=backend, **kwargs)
    return OnItsDevice(model)


# Special tokens in the order each family's vocabularies start with them.
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def save_tokenizer(folder, model_type, vocab_size, model_max_length=None):
    """A word-level tokenizer.json (+ tokenizer_config.json) of `vocab_size` ids with the family's
    special tokens and template: [CLS] A [SEP] for BERT, DistilBERT and ELECTRA, <s> A </s> for the
    RoBERTa family and MPNet (whose pairs are <s> A </s></s> B </s>, as transformers' MPNet converter lays
    them out). Words are "w5", "w6", ...; anything else is the unknown token."""
    from pathlib import Path

    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    roberta = model_type in ("roberta", "xlm-roberta", "camembert", "mpnet")
    specials = _ROBERTA_SPECIALS if roberta else _BERT_SPECIALS
    vocab = {token: index for index, token in enumerate(specials)}
    vocab.update({f"w{index}": index for index in range(len(specials), vocab_size)})
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=specials[3] if roberta else specials[1]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if model_type == "mpnet":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0 </s>:0", pair="<s>:0 $A:0 </s>:0 </s>:0 $B:1 </s>:1",
            special_tokens=[("<s>", 0), ("</s>", 2)])
    elif roberta:
        tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:
        tokenizer.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tokenizer.add_special_tokens(specials)
    folder = Path(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"pad_token": specials[1] if roberta else specials[0], "tokenizer_class": "PreTrainedTokenizerFast"}
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
