"""Tiny sentence-transformers folders for tests: a random BERT with its own small WordPiece vocabulary,
wrapped in pipelines that sentence-transformers itself builds and saves (no downloads); and a cross-encoder
checkpoint (a random BertForSequenceClassification) with the query-document pairs it scores."""

import json
import shutil
import string
from pathlib import Path

import torch

from tests.bert_factory import random_bert

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "man", "is", "playing", "guitar", "query", "passage", "hello", "world", "search", "for"]
CHARACTERS = list(string.ascii_lowercase + string.digits + ".,!?;:'-")
VOCAB = SPECIAL + WORDS + CHARACTERS + ["##" + c for c in string.ascii_lowercase + string.digits]
VOCAB_SIZE = 211
TEXTS = ["the man is playing guitar", "Hello world!", "a", "", "search for the guitar " * 12, "xyz 42",
         "query: a man", "the the the the the, a a a!"]


def tiny_encoder(folder, lowercase=True, **overrides):
    """A random BERT (hidden 64) and a WordPiece tokenizer over VOCAB saved to `folder`."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = VOCAB + [f"w{i}" for i in range(VOCAB_SIZE - len(VOCAB))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    random_bert(folder, vocab_size=VOCAB_SIZE, **overrides)
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=lowercase).save_pretrained(folder)
    return folder


def save_pipeline(folder, encoder, *, pooling="mean", include_prompt=True, dense=(), layer_norm=False,
                  normalize=False, max_seq_length=None, prompts=None, default_prompt_name=None, seed=0):
    """SentenceTransformer(modules=[Transformer, Pooling, *Dense, LayerNorm?, Normalize?]).save(folder).
    dense: dicts of Dense arguments (out_features, activation_function, bias, use_residual)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Normalize, Pooling, Transformer

    torch.manual_seed(seed)
    transformer = Transformer(str(encoder), max_seq_length=max_seq_length)
    hidden = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(hidden, pooling_mode=pooling, include_prompt=include_prompt)]
    dim = modules[-1].get_embedding_dimension()
    for options in dense:
        modules.append(Dense(dim, **options))
        with torch.no_grad():  # random biases too: a zero bias would hide a dropped one
            if modules[-1].linear.bias is not None:
                modules[-1].linear.bias.normal_()
        dim = options["out_features"]
    if layer_norm:
        modules.append(LayerNorm(dim))
        with torch.no_grad():
            modules[-1].norm.weight.normal_()
            modules[-1].norm.bias.normal_()
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt_name,
                                device="cpu")
    model.save(str(folder))
    return Path(folder)


def edit_json(file, change):
    """Rewrite a JSON file through `change(value) -> value`."""
    file = Path(file)
    file.write_text(json.dumps(change(json.loads(file.read_text())), indent=2))


# (query, document) pairs for a cross-encoder: a match, a long distractor, another topic, CJK, an empty query.
PAIRS = [("what is the capital of France?", "Paris is the capital of France."),
         ("what is the capital of France?", "Berlin is a city in Germany. " * 12),
         ("how do plants make food?", "Photosynthesis turns light into chemical energy."),
         ("深度学习是什么", "Deep learning uses neural networks."),
         ("", "an empty query")]


def reranker_folder(folder, tokenizer_folder, num_labels):
    """A random BertForSequenceClassification saved by transformers with all-MiniLM's tokenizer: the layout of a
    cross-encoder checkpoint. Weights larger than BERT's initialisation spread the scores apart."""
    random_bert(folder, model_class="BertForSequenceClassification", vocab_size=30522, num_labels=num_labels,
                max_position_embeddings=64, initializer_range=0.3)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tokenizer_folder / name).is_file():
            shutil.copy(tokenizer_folder / name, folder / name)
    return folder
