"""What encode() returns, as sentence-transformers' SentenceTransformer.encode returns it.

The stream computes float32 sentence embeddings [N, D] (or, for output_value "token_embeddings" / None,
one item per text); ReturnOptions.finish turns a whole call's result into what sentence-transformers gives
for the same options:
  - sentence embeddings: a NumPy array by default; a tensor with convert_to_tensor; a list of 1-D tensors
    with convert_to_numpy=False; a precision other than float32 quantizes first
    (fastbert.sentence.quantize: int8 / uint8 ranges span the whole call);
  - output_value "token_embeddings": a list of [len_i, H] tensors, one per text, of its real tokens;
  - output_value None: a list of dicts per text (input_ids, token_type_ids, attention_mask, modality,
    prompt_length when a prompt was used, token_embeddings, sentence_embedding);
  - a single string gives the one item (a 1-D array, a tensor, a dict).
Tensors are on the encoding device, as sentence-transformers leaves them; quantized ones on the CPU.
One deliberate difference: an empty input gives an empty result of the usual type, dtype and width
([0, D]; sentence-transformers gives a shape-(0,) float64 array), so it joins other results."""

from dataclasses import dataclass

import torch

from .quantize import check_precision, quantize_embeddings

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
# The options that shape a whole call's result: a worker pool applies them once in the parent.
RETURN_OPTIONS = ("precision", "convert_to_numpy", "convert_to_tensor")


def check_output_value(output_value):
    if output_value not in OUTPUT_VALUES:
        raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
    return output_value


@dataclass(frozen=True)
class ReturnOptions:
    """How a call's embeddings are returned; see the module docstring."""

    output_value: str | None = "sentence_embedding"
    precision: str = "float32"
    as_tensor: bool = False
    as_numpy: bool = True

    @classmethod
    def resolve(cls, output_value="sentence_embedding", precision="float32", convert_to_numpy=True,
                convert_to_tensor=False):
        """sentence-transformers' rules: convert_to_tensor wins over convert_to_numpy; both apply to sentence
        embeddings only (token embeddings and dicts come as lists)."""
        output_value, precision = check_output_value(output_value), check_precision(precision)
        if output_value is None and precision != "float32":
            raise ValueError(f"precision={precision!r} quantizes sentence or token embeddings; output_value=None "
                             "returns dicts of every output, which it cannot quantize")
        sentence = output_value == "sentence_embedding"
        return cls(output_value, precision, as_tensor=sentence and bool(convert_to_tensor),
                   as_numpy=sentence and bool(convert_to_numpy) and not convert_to_tensor)

    @property
    def per_call_ranges(self):
        """Whether the result depends on every text of the call at once (int8 / uint8 ranges)."""
        return self.precision.endswith("int8")

    def finish(self, result, single, device=None):
        """A whole call's result -> what encode returns. result: float32 [N, D] tensor on the CPU for
        sentence embeddings, else a list of per-text tensors or dicts; single: the input was one string;
        device: where returned float tensors go (None: where they are)."""
        if self.output_value != "sentence_embedding":
            if self.precision != "float32":
                result = quantize_embeddings(result, self.precision)
            else:
                result = [_to_device(item, device) for item in result]
            return result[0] if single else result
        if self.precision != "float32":
            result = torch.from_numpy(quantize_embeddings(result, self.precision))
        elif device is not None and not self.as_numpy:
            result = result.to(device)
        if self.as_numpy:
            result = result.numpy()
        elif not self.as_tensor:
            result = list(result)  # rows as 1-D tensors, as sentence-transformers' convert_to_numpy=False
        return result[0] if single else result


def _to_device(item, device):
    if device is None:
        return item
    if isinstance(item, dict):
        return {key: _to_device(value, device) for key, value in item.items()}
    return item.to(device) if isinstance(item, torch.Tensor) else item


def split_return_options(options):
    """For a worker pool: (the options each worker's encode gets, the ReturnOptions the parent applies to
    the joined result). Workers return float tensors; the parent quantizes and converts once, so int8
    ranges span the whole call as on one device."""
    returned = ReturnOptions.resolve(output_value=options.get("output_value", "sentence_embedding"),
                                     **{name: options[name] for name in RETURN_OPTIONS if name in options})
    worker = {name: value for name, value in options.items() if name not in RETURN_OPTIONS}
    return {**worker, "convert_to_tensor": True}, returned

