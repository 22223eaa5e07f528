"""The served models: each loaded once per executor device, with what the routes need to prepare its
inputs (tokenize, truncate, check token ids) and what the executors call to run a batch.

Embedding models load through fastbert.from_pretrained, so the folder's sentence-transformers pipeline
(pooling, Dense, Normalize, prompts, max_seq_length) applies as in model.encode; classifiers (cross-encoders,
sequence classification) through fastbert.classify.Classifier. Batches run on packed tokens
(fastbert.engine.packing.pack_inputs -> forward_tokens -> the pipeline's pooling), as encode runs them."""

from pathlib import Path

import torch

from fastbert.checkpoint.tokenizer import Tokenizer
from fastbert.engine.packing import pack_inputs
from fastbert.jsonio import read_json
from fastbert.sentence.modules import Normalize
from fastbert.sentence.stream import _prompt_length

from .errors import ServeError


class _Served:
    """What both kinds share: name, folder, tokenizers, length limit, vocabulary."""

    kind = None

    def __init__(self, name, path, replicas, tokenizer, max_length, vocab_size):
        self.name, self.path, self.replicas = name, Path(path), replicas
        self.tokenizer, self.max_length, self.vocab_size = tokenizer, max_length, vocab_size
        # A second tokenizer without a length limit of its own: it measures inputs (auto-truncate off) and
        # tokenizes whole texts to keep their end (truncation_direction Left).
        self.untruncated = Tokenizer.from_pretrained(self.path)
        self.untruncated.model_max_length = self.untruncated.max_length = None

    def tokenize(self, texts, pairs=None, truncate=True, direction="right"):
        """[(ids, token_type_ids)] per text (or pair), real tokens only. truncate False: a text longer than
        max_length is a 413 naming it; direction "left" keeps a text's end (its first and last special
        tokens stay)."""
        limit = self.max_length
        if truncate and direction == "right":
            return _rows(self.tokenizer(texts, pairs, max_length=limit))
        if not truncate:
            rows = _rows(self.untruncated(texts, pairs, max_length=limit + 1))
            for index, (ids, _) in enumerate(rows):
                if len(ids) > limit:
                    raise ServeError(413, f"input {index} is longer than this model's limit of {limit} tokens; "
                                          "send truncate=true (or start the server with --auto-truncate)",
                                     code="context_length_exceeded")
            return rows
        if pairs is not None:
            raise ServeError(422, "truncation_direction Left is supported for single texts, not pairs")
        rows = _rows(self.untruncated(texts))
        return [(ids[:1] + ids[len(ids) - limit + 1:], types[:limit]) if len(ids) > limit else (ids, types)
                for ids, types in rows]

    def check_ids(self, sequences):
        """Token-id inputs: lists of ids in the vocabulary, within the length limit (a 4xx naming the
        problem). The server cannot tell where a model's special tokens sit in a list of ids, so it never
        cuts one: a too-long list is a 413."""
        checked = []
        for index, ids in enumerate(sequences):
            if not ids:
                raise ServeError(400, f"input {index} is an empty list of token ids", "Empty")
            bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
            if bad is not None:
                raise ServeError(422, f"input {index} holds token id {bad}, outside this model's vocabulary "
                                      f"of {self.vocab_size} ids (0..{self.vocab_size - 1})")
            if len(ids) > self.max_length:
                raise ServeError(413, f"input {index} has {len(ids)} token ids, more than this model's limit "
                                      f"of {self.max_length}", code="context_length_exceeded")
            checked.append((list(ids), [0] * len(ids)))
        return checked

    def padded(self, sequences):
        """[(ids, types)] -> padded int64 (input_ids, attention_mask, token_type_ids) [B, S] on the CPU."""
        width = max(len(ids) for ids, _ in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((len(sequences), width), dtype=torch.int64)
        types = torch.zeros((len(sequences), width), dtype=torch.int64)
        for row, (row_ids, row_types) in enumerate(sequences):
            ids[row, :len(row_ids)] = torch.tensor(row_ids)
            mask[row, :len(row_ids)] = 1
            types[row, :len(row_types)] = torch.tensor(row_types)
        return ids, mask, types


def _rows(batch):
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [(batch["input_ids"][row, :n].tolist(), batch["token_type_ids"][row, :n].tolist())
            for row, n in enumerate(lengths)]


class EmbeddingModel(_Served):
    kind = "embed"

    def __init__(self, name, path, replicas):
        first = next(iter(replicas.values()))
        self.pipeline = first.sentence_pipeline
        tokenizer = first.get_tokenizer()
        limits = [n for n in (self.pipeline.max_seq_length, tokenizer.model_max_length) if n]
        super().__init__(name, path, replicas, tokenizer, min(limits) if limits else first.config.max_sequence_length,
                         first.config.vocab_size)
        self.dim = self.pipeline.output_dim()
        self.normalizes = bool(self.pipeline.modules) and isinstance(self.pipeline.modules[-1], Normalize)
        self.config = first.config

    @property
    def dtype(self):
        return str(next(iter(self.replicas.values())).dtype).removeprefix("torch.")

    def prepare_texts(self, texts, prompt_name=None, truncate=True, direction="right"):
        """(group, sequences) for texts, with the model's prompt (prompt_name, else its default) and lower
        casing, as model.encode prepares them."""
        try:
            prompt = self.pipeline.resolve_prompt(None, prompt_name) or ""
        except ValueError as err:
            raise ServeError(422, str(err)) from None
        lower = self.pipeline.do_lower_case
        prepared = [(prompt + text).lower() if lower else prompt + text for text in texts]
        skip = 0
        if prompt and not self.pipeline.pooling.include_prompt:
            skip = _prompt_length(self.tokenizer, prompt.lower() if lower else prompt, self.max_length)
        return (self.name, skip), self.tokenize(prepared, truncate=truncate, direction=direction)

    def run(self, group, sequences, device):
        """A batch -> one float32 embedding per sequence, before any final Normalize (the routes truncate to
        the requested dimensions first, then normalize)."""
        model = self.replicas[device]
        ids, mask, types = self.padded(sequences)
        with torch.inference_mode():
            packing, *packed = pack_inputs(model.config, "cpu", ids, mask, types, to_device=model.device)
            hidden = model.forward_tokens(packing, *packed)
            embeddings = model.sentence_pipeline.embed(hidden, packing.cu_seqlens, prompt_tokens=group[1],
                                                       normalize=False)
        return list(embeddings.float().cpu())

    def info(self):
        return {"embedding": {"pooling": "+".join(self.pipeline.pooling.modes), "dimensions": self.dim,
                              "normalized": self.normalizes}}


class ClassifierModel(_Served):
    kind = "classify"

    def __init__(self, name, path, replicas):
        first = next(iter(replicas.values()))
        super().__init__(name, path, replicas, first.tokenizer, first.max_length, first.encoder.config.vocab_size)
        self.num_labels, self.id2label = first.num_labels, dict(first.id2label)
        self.default_activation = first.default_activation
        self.config = first.encoder.config
        # As Classifier.predict prepares its inputs: lower-cased when the folder says, and token types only for
        # the tokenizers whose transformers class returns them.
        self.do_lower_case, self.token_types = first.do_lower_case, first.token_types

    @property
    def dtype(self):
        return str(next(iter(self.replicas.values())).encoder.dtype).removeprefix("torch.")

    def prepare_pairs(self, firsts, seconds=None, truncate=True, direction="right"):
        if self.do_lower_case:
            firsts = [text.lower() for text in firsts]
            seconds = None if seconds is None else [text.lower() for text in seconds]
        return (self.name, 0), self.tokenize(firsts, seconds, truncate=truncate, direction=direction)

    def run(self, group, sequences, device):
        """A batch -> one float32 logits row [num_labels] per sequence."""
        classifier = self.replicas[device]
        ids, mask, types = self.padded(sequences)
        with torch.inference_mode():
            device = classifier.encoder.device
            logits = classifier.forward(ids.to(device), mask.to(device), types.to(device) if self.token_types else None)
        return list(logits.float().cpu())

    def scores(self, logits, raw=False):
        """[n, num_labels] logits -> scores as TEI gives them: raw logits, else softmax over several labels
        and the folder's activation (CrossEncoder.predict's default: sigmoid for one label) otherwise."""
        if raw:
            return logits
        if self.num_labels > 1:
            return torch.softmax(logits, dim=-1)
        activation = self.default_activation
        return logits if activation is None else activation(logits)

    def info(self):
        labels = {int(i): label for i, label in self.id2label.items()}
        return {"classifier": {"id2label": {str(i): label for i, label in labels.items()},
                               "label2id": {label: i for i, label in labels.items()}}}


class Registry:
    """Served name -> model, in the order given; the first of a kind is that kind's default."""

    def __init__(self, models, devices):
        self.models, self.devices = {model.name: model for model in models}, devices

    def get(self, name, kind):
        """The model clients call `name` (None: the first of `kind`), which must be of `kind`."""
        if name is None:
            model = next((m for m in self.models.values() if m.kind == kind), None)
            if model is None:
                raise ServeError(400, f"this server serves no {_KIND_WORDS[kind]} model",
                                 code="model_not_found")
            return model
        model = self.models.get(name)
        if model is None:
            raise ServeError(404, f"model {name!r} is not served here; served: {sorted(self.models)}",
                             code="model_not_found", param="model")
        if model.kind != kind:
            raise ServeError(400, f"model {name!r} is {_KIND_WORDS[model.kind]} model, not {_KIND_WORDS[kind]} "
                                  "model", code="wrong_model_kind", param="model")
        return model


_KIND_WORDS = {"embed": "an embedding", "classify": "a classification (reranker)"}


def detect_kind(path):
    """'classify' for a *ForSequenceClassification checkpoint (a cross-encoder), else 'embed'."""
    architectures = read_json(Path(path) / "config.json", default={}).get("architectures") or []
    return "classify" if any(str(a).endswith("ForSequenceClassification") for a in architectures) else "embed"


def default_name(spec_path, path):
    """A Hub id stays as given; a folder is called by its name."""
    return Path(path).name if Path(spec_path).expanduser().exists() else spec_path


def load_models(specs, settings):
    """Load every spec on every device -> Registry. Errors name the model."""
    from fastbert.checkpoint.hub import resolve_model_path
    from fastbert.engine.runtime import resolve_device_dtype_backend

    devices = []
    for device in settings.devices or [None]:
        resolved, _, _ = resolve_device_dtype_backend(device, settings.dtype, settings.backend)
        if str(resolved) in devices:  # two executors would share one model copy: refused, not guessed at
            raise ValueError(f"devices lists {resolved} twice; give each device once")
        devices.append(str(resolved))
    models = []
    for spec in specs:
        path = resolve_model_path(spec.path)
        kind = detect_kind(path) if spec.kind == "auto" else spec.kind
        name = spec.name or default_name(spec.path, path)
        if any(model.name == name for model in models):
            raise ValueError(f"two models are served as {name!r}: give each a distinct served name")
        try:
            if kind == "embed":
                import fastbert

                replicas = {device: fastbert.from_pretrained(path, dtype=settings.dtype, device=device,
                                                             backend=settings.backend) for device in devices}
                models.append(EmbeddingModel(name, path, replicas))
            else:
                from fastbert.classify import Classifier

                replicas = {device: Classifier.from_pretrained(path, dtype=settings.dtype, device=device,
                                                               backend=settings.backend) for device in devices}
                models.append(ClassifierModel(name, path, replicas))
        except Exception as err:
            raise ValueError(f"cannot serve {spec.path}: {type(err).__name__}: {err}") from err
    if not models:
        raise ValueError("give at least one model to serve")
    return Registry(models, devices)
