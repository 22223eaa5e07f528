"""Request bodies as pydantic models, in the peers' exact shapes: OpenAI's embeddings API and Hugging Face
text-embeddings-inference's (TEI) routes. Strict types: "1" is not a token id and true is not a number, as
in the APIs these copy. Unknown fields are ignored, as both peers do. TEI bodies take one extension,
`model`: which served model (default: the first of its kind)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

# A text, texts, one sequence of token ids, or several.
TextsOrIds = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
Direction = Literal["Left", "Right", "left", "right"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingRequest(_Body):
    """OpenAI POST /v1/embeddings."""

    input: TextsOrIds
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


class EmbedRequest(_Body):
    """TEI POST /embed."""

    inputs: TextsOrIds
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: Direction = "Right"
    prompt_name: StrictStr | None = None
    dimensions: StrictInt | None = None
    model: StrictStr | None = None


class RerankRequest(_Body):
    """TEI POST /rerank."""

    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Direction = "Right"
    model: StrictStr | None = None


class PredictRequest(_Body):
    """TEI POST /predict. As in TEI, a list of exactly two strings is one pair; a list of lists is a batch."""

    inputs: StrictStr | list[StrictStr] | list[list[StrictStr]]
    raw_scores: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Direction = "Right"
    model: StrictStr | None = None


class TokenizeRequest(_Body):
    """TEI POST /tokenize."""

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None
    model: StrictStr | None = None


class DecodeRequest(_Body):
    """TEI POST /decode."""

    ids: list[StrictInt] | list[list[StrictInt]]
    skip_special_tokens: StrictBool = True
    model: StrictStr | None = None
