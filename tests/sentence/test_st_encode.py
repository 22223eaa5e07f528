"""FastBertModel.encode as a sentence-transformers drop-in: option by option against SentenceTransformer.encode
(torch backend, CPU) on the bundled all-MiniLM-L6-v2 and on a tiny saved pipeline with prompts, a Dense
and a Pooling that excludes the prompt. Each case compares what comes back — its type, shape and dtype,
then its values: floats within SENTENCE_COSINE, hidden states within ENCODER_ATOL_FP32, quantized values
equal except where a float lies within its own error of a rounding boundary (see assert_quantized_close)."""

import numpy as np
import pytest
import torch

import fastbert
from fastbert.sentence import stream
from fastbert.sentence.quantize import quantize_embeddings
from tests.st_factory import save_pipeline, tiny_encoder
from tests.tolerances import ENCODER_ATOL_FP32, SENTENCE_COSINE

st = pytest.importorskip("sentence_transformers")
from sentence_transformers.util.quantization import quantize_embeddings as st_quantize_embeddings  # noqa: E402

# Short on purpose (sentence-transformers pads a batch to its longest text): empty, one token, accents, CJK
# and emoji, and one text past the tiny folder's length; truncation itself: tests/sentence/test_encode.py.
TEXTS = ["A man is playing a guitar.", "Hi", "Ça coûte très cher — naïve café", "", "深度学习 🍕 " * 12,
         "query: a man"]
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return save_pipeline(folder, tiny_encoder(folder / "encoder"), include_prompt=False,
                         dense=[dict(out_features=40)], prompts=PROMPTS, default_prompt_name="passage")


# all-MiniLM-L6-v2 makes each case take seconds on a small CPU: the quick tier runs the tiny folder.
@pytest.fixture(scope="module", params=[pytest.param("minilm", marks=pytest.mark.slow), "tiny"])
def pair(request, minilm_path, tiny_folder):
    """(fastbert model, SentenceTransformer) on the same folder."""
    folder = minilm_path if request.param == "minilm" else tiny_folder
    ours = fastbert.from_pretrained(folder, device="cpu", dtype=torch.float32, backend="torch")
    return ours, st.SentenceTransformer(str(folder), device="cpu")


_ENCODED = {}


def encoded(model, texts, **options):
    """model.encode, memoized: the float results the quantized cases compare against recur (only read)."""
    key = (id(model), texts if isinstance(texts, str) else tuple(texts), repr(sorted(options.items())))
    if key not in _ENCODED:
        _ENCODED[key] = model.encode(texts, **options)
    return _ENCODED[key]


def describe(value):
    """The structure of an encode result: container types, dtypes and shapes, nested."""
    if isinstance(value, list):
        return ["list", [describe(item) for item in value]]
    if isinstance(value, dict):
        return {key: describe(item) for key, item in value.items()}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return type(value).__name__, str(value.dtype).removeprefix("torch."), tuple(value.shape)
    return type(value).__name__, value


def as_float64(value):
    return torch.as_tensor(np.asarray(value) if isinstance(value, np.ndarray) else value).double()


def assert_cosine(ours, theirs):
    ours, theirs = as_float64(ours).reshape(-1, ours.shape[-1]), as_float64(theirs).reshape(-1, theirs.shape[-1])
    cosine = torch.nn.functional.cosine_similarity(ours, theirs)
    assert cosine.min().item() >= SENTENCE_COSINE, cosine


def assert_close(ours, theirs, hidden=False):
    """Values: sentence embeddings by cosine; token embeddings (hidden states, hidden=True or a dict's
    "token_embeddings") by the encoder's bound; integers (ids, masks, prompt lengths) exactly."""
    assert describe(ours) == describe(theirs)
    if isinstance(ours, list):
        for a, b in zip(ours, theirs):
            assert_close(a, b, hidden)
    elif isinstance(ours, dict):
        for key in ours:
            assert_close(ours[key], theirs[key], hidden=key == "token_embeddings")
    elif isinstance(ours, (torch.Tensor, np.ndarray)) and "float" in str(ours.dtype):
        if hidden:
            assert (as_float64(ours) - as_float64(theirs)).abs().max() <= ENCODER_ATOL_FP32
        elif as_float64(ours).numel():
            assert_cosine(ours, theirs)
    elif isinstance(ours, (torch.Tensor, np.ndarray)):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    else:
        assert ours == theirs


# Each option alone (the default first), as a sentence-transformers user writes it.
FLOAT_OPTIONS = [
    {}, dict(convert_to_tensor=True), dict(convert_to_numpy=False),
    dict(convert_to_numpy=False, convert_to_tensor=True),
    dict(normalize_embeddings=True), dict(truncate_dim=16), dict(truncate_dim=16, normalize_embeddings=True),
    dict(prompt="query: "), dict(prompt_name="query"), dict(prompt_name="passage"), dict(prompt=""),
    dict(batch_size=2), dict(show_progress_bar=False), dict(show_progress_bar=True), dict(device="cpu"),
    dict(precision="float32"),
]


def prompts_exist(model, options):
    return options.get("prompt_name") in (None, *model.sentence_pipeline.prompts)


@pytest.mark.parametrize("options", FLOAT_OPTIONS, ids=str)
def test_sentence_embeddings_match_sentence_transformers(pair, options):
    ours_model, theirs_model = pair
    if not prompts_exist(ours_model, options):
        pytest.skip("this folder has no such prompt")
    for texts in (TEXTS, TEXTS[0]):
        ours, theirs = ours_model.encode(texts, **options), theirs_model.encode(texts, **options)
        assert describe(ours) == describe(theirs)
        assert_close(ours, theirs)


def test_default_is_a_float32_array(pair):
    ours_model, _ = pair
    dim = ours_model.sentence_pipeline.output_dim()
    embeddings = ours_model.encode(TEXTS)
    assert isinstance(embeddings, np.ndarray) and embeddings.dtype == np.float32
    assert embeddings.shape == (len(TEXTS), dim) and ours_model.encode("one").shape == (dim,)


@pytest.mark.parametrize("output_value", ["token_embeddings", None])
def test_token_outputs_match_sentence_transformers(pair, output_value):
    """Real tokens only: sentence-transformers pads each text's dict to its batch's longest text (an
    artifact of its batching), fastbert gives each text its own length, so the comparison drops the
    padding (attention_mask 0) from sentence-transformers' side."""
    ours_model, theirs_model = pair
    for options in ({}, dict(prompt="query: "), dict(truncate_dim=16, normalize_embeddings=True)):
        ours = ours_model.encode(TEXTS, output_value=output_value, **options)
        theirs = theirs_model.encode(TEXTS, output_value=output_value, **options)
        if output_value is None:
            theirs = [unpadded(item) for item in theirs]
        assert_close(ours, theirs, hidden=output_value == "token_embeddings")
        single = ours_model.encode(TEXTS[0], output_value=output_value, **options)
        assert describe(single) == describe(ours[0])


def unpadded(item):
    real = item["attention_mask"].bool()
    return {key: value[real] if isinstance(value, torch.Tensor) and value.ndim and len(value) == len(real) else value
            for key, value in item.items()}


def test_token_embeddings_are_the_real_tokens(pair):
    ours_model, _ = pair
    tokenized = ours_model.get_tokenizer()(TEXTS, max_length=ours_model.sentence_pipeline.max_seq_length)
    tokens = ours_model.encode(TEXTS, output_value="token_embeddings", prompt="")  # no default prompt
    assert [len(t) for t in tokens] == tokenized["attention_mask"].sum(1).tolist()
    assert all(t.shape[1] == ours_model.config.hidden_size for t in tokens)


# ---------------------------------------------------------------------------------------------------
# precision: sentence-transformers' quantization, reproduced


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("convert", [{}, dict(convert_to_tensor=True), dict(convert_to_numpy=False)], ids=str)
def test_quantized_match_sentence_transformers(pair, precision, convert):
    ours_model, theirs_model = pair
    ours = ours_model.encode(TEXTS, precision=precision, **convert)
    theirs = theirs_model.encode(TEXTS, precision=precision, **convert)
    assert describe(ours) == describe(theirs)
    assert_quantized_close(np.stack([np.asarray(row) for row in ours]), np.stack([np.asarray(r) for r in theirs]),
                           encoded(ours_model, TEXTS), encoded(theirs_model, TEXTS), precision)


def assert_quantized_close(ours, theirs, ours_float, theirs_float, precision):
    """Equal, except where sentence-transformers' float lies within the two floats' difference of a rounding
    boundary. With error e = max |ours_float - theirs_float|, each dimension's min (start) moves by at most e
    and its step (max - min) / 255 by at most 2e / 255, so the scaled value u = (x - start) / step, in
    [0, 255], moves by at most (2e + 255 * 2e / 255) / step = 4e / step; float32 rounding of the division
    adds a few ulps of 255 (2 ** -15, within 1e-4). floor(u) can then differ, by one, only where u lies
    within that of an integer. binary: x > 0 can differ only where |x| <= e."""
    error = np.abs(ours_float.astype(np.float64) - theirs_float).max()
    if precision.endswith("binary"):
        offset = 128 if precision == "binary" else 0
        ours_bits = np.unpackbits((ours.astype(np.int16) + offset).astype(np.uint8), axis=-1)
        theirs_bits = np.unpackbits((theirs.astype(np.int16) + offset).astype(np.uint8), axis=-1)
        differ = ours_bits != theirs_bits
        assert (np.abs(theirs_float[differ]) <= error).all()
        return
    steps = (theirs_float.max(0).astype(np.float64) - theirs_float.min(0)) / 255
    scaled = (theirs_float - theirs_float.min(0)) / np.where(steps == 0, 1, steps)
    distance = np.abs(scaled - np.round(scaled))
    bound = np.broadcast_to(4 * error / np.where(steps == 0, 1, steps) + 1e-4, scaled.shape)
    delta = ours.astype(np.int16) - theirs.astype(np.int16)
    assert np.abs(delta).max() <= 1
    assert (distance[delta != 0] <= bound[delta != 0]).all(), (distance[delta != 0], bound[delta != 0])


def test_quantized_token_embeddings_share_ranges(pair):
    ours_model, theirs_model = pair
    ours = ours_model.encode(TEXTS, output_value="token_embeddings", precision="uint8")
    theirs = theirs_model.encode(TEXTS, output_value="token_embeddings", precision="uint8")
    assert describe(ours) == describe(theirs)
    assert_quantized_close(np.concatenate(ours), np.concatenate(theirs),
                           torch.cat(encoded(ours_model, TEXTS, output_value="token_embeddings")).numpy(),
                           torch.cat(encoded(theirs_model, TEXTS, output_value="token_embeddings")).numpy(), "uint8")


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_ranges_need_more_than_one_embedding(pair, precision):
    """As in sentence-transformers: a single text has no spread to take int8 / uint8 ranges from."""
    ours_model, theirs_model = pair
    with pytest.raises(ValueError, match="single embedding"):
        theirs_model.encode("one text", precision=precision)
    with pytest.raises(ValueError, match="single embedding"):
        ours_model.encode("one text", precision=precision)


def test_quantize_is_sentence_transformers_arithmetic():
    """The same floats give the same integers, bit for bit: random values, a constant dimension (step 0),
    explicit ranges and calibration embeddings, token matrices sharing ranges, 1-D binary, empty input."""
    generator = np.random.default_rng(0)
    embeddings = generator.normal(size=(57, 24)).astype(np.float32)
    embeddings[:, 3] = 0.25
    calibration = generator.normal(size=(200, 24)).astype(np.float32)
    ranges = np.stack([calibration.min(0), calibration.max(0)])
    tokens = [generator.normal(size=(n, 24)).astype(np.float32) for n in (1, 5, 9)]
    cases = [(embeddings, {}), (torch.from_numpy(embeddings), {}), (embeddings, dict(ranges=ranges)),
             (embeddings, dict(calibration_embeddings=calibration)), (embeddings[0], {}), (tokens, {}),
             (embeddings[:0], {}), (embeddings.astype(np.float64), {})]
    for precision in ("float32", "int8", "uint8", "binary", "ubinary"):
        for values, options in cases:
            if precision.endswith("int8") and isinstance(values, np.ndarray) and values.ndim == 1:
                continue  # no ranges from one embedding: both refuse (test_ranges_need_more_than_one_embedding)
            ours = quantize_embeddings(values, precision, **options)
            theirs = st_quantize_embeddings(values, precision, **options)
            assert describe(ours) == describe(theirs), (precision, options)
            pairs = zip(ours, theirs) if isinstance(ours, list) else [(ours, theirs)]
            assert all(np.array_equal(a, b) for a, b in pairs), (precision, options)


@pytest.mark.parametrize("options", [dict(precision="int4"), dict(output_value="pooler_output"),
                                     dict(output_value=None, precision="int8")], ids=str)
def test_bad_output_options(pair, options):
    ours_model, _ = pair
    with pytest.raises(ValueError, match="precision|output_value"):
        ours_model.encode(TEXTS[:2], **options)


# ---------------------------------------------------------------------------------------------------
# Single string, empty list, encode_query / encode_document, unknown options


@pytest.mark.parametrize("options", [{}, dict(convert_to_tensor=True), dict(convert_to_numpy=False),
                                     dict(output_value="token_embeddings"), dict(output_value=None),
                                     dict(precision="binary"), dict(precision="int8")], ids=str)
def test_empty_list(pair, options):
    """The container sentence-transformers returns, empty. One deliberate difference: fastbert's empty array
    or tensor keeps the result's width and dtype ([0, D] float32, [0, D/8] int8...) where
    sentence-transformers gives shape (0,) (float64 for NumPy), so it joins non-empty results."""
    ours_model, theirs_model = pair
    ours, theirs = ours_model.encode([], **options), theirs_model.encode([], **options)
    assert type(ours) is type(theirs) and len(ours) == len(theirs) == 0
    if isinstance(ours, (np.ndarray, torch.Tensor)):
        full = ours_model.encode(TEXTS[:3], **options)
        assert ours.shape == (0, *full.shape[1:]) and ours.dtype == full.dtype


@pytest.mark.parametrize("method", ["encode_query", "encode_document"])
@pytest.mark.parametrize("options", [{}, dict(prompt_name="passage"), dict(prompt="custom: "),
                                     dict(convert_to_tensor=True, normalize_embeddings=True)], ids=str)
def test_query_and_document(pair, method, options):
    ours_model, theirs_model = pair
    if not prompts_exist(ours_model, options):
        pytest.skip("this folder has no such prompt")
    ours, theirs = getattr(ours_model, method)(TEXTS, **options), getattr(theirs_model, method)(TEXTS, **options)
    assert_close(ours, theirs)
    assert describe(getattr(ours_model, method)("one")) == describe(getattr(theirs_model, method)("one"))


def test_query_and_document_prompts(tmp_path):
    """encode_document's fallbacks: "document", else "passage", else "corpus"; encode_query's empty "query"
    prompt is no prompt, never the default_prompt_name's (the tiny folder's default is "passage")."""
    folder = save_pipeline(tmp_path, tiny_encoder(tmp_path / "encoder"), prompts={"corpus": "corpus: "},
                           default_prompt_name="corpus")
    ours = fastbert.from_pretrained(folder, device="cpu", dtype=torch.float32, backend="torch")
    theirs = st.SentenceTransformer(str(folder), device="cpu")
    for method in ("encode", "encode_query", "encode_document"):
        assert_close(getattr(ours, method)(TEXTS), getattr(theirs, method)(TEXTS))
    assert not np.allclose(ours.encode(TEXTS), ours.encode_query(TEXTS))


def test_unknown_option_names_encode(pair):
    ours_model, _ = pair
    for call in (ours_model.encode, ours_model.encode_query, ours_model.encode_document):
        with pytest.raises(TypeError, match=r"encode\(\) got an unexpected keyword argument 'convert_to_list'"):
            call(TEXTS[:2], convert_to_list=True)
    for call in (stream.encode, stream.iter_encode):
        with pytest.raises(TypeError, match=r"encode\(\) got an unexpected keyword argument 'convert_to_list'"):
            call(ours_model, TEXTS[:2], convert_to_list=True)


def test_device(pair):
    ours_model, _ = pair
    assert np.array_equal(ours_model.encode(TEXTS[:3], device=torch.device("cpu")), ours_model.encode(TEXTS[:3]))
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N"):
        ours_model.encode(TEXTS[:3], device="meta")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="does not move a loaded model"):
            ours_model.encode(TEXTS[:3], device="cuda")
    with pytest.raises(ValueError, match="devices=, or pool=|not two of them"):
        ours_model.encode(TEXTS[:3], device=["cpu"], devices=["cpu"])


def test_normalize_contradiction(pair):
    ours_model, _ = pair
    with pytest.raises(ValueError, match="contradicts normalize_embeddings"):
        ours_model.encode(TEXTS[:2], normalize=False, normalize_embeddings=True)


# ---------------------------------------------------------------------------------------------------
# iter_encode yields what encode returns, chunk by chunk


def test_iter_encode_yields_encode_results(pair):
    ours_model, _ = pair
    for options in ({}, dict(convert_to_tensor=True), dict(precision="ubinary"), dict(output_value="token_embeddings")):
        chunks = list(fastbert.iter_encode(ours_model, iter(TEXTS), chunk_size=4, **options))
        assert [len(chunk) for chunk in chunks] == [4, 2]
        whole = ours_model.encode(TEXTS, **options)
        assert describe([row for chunk in chunks for row in chunk]) == describe(list(whole))
    with pytest.raises(ValueError, match="ranges would come from each chunk"):
        fastbert.iter_encode(ours_model, TEXTS, precision="int8")


# ---------------------------------------------------------------------------------------------------
# A worker pool takes the same options (two CPU workers on the tiny folder)


@pytest.mark.slow
def test_pool_takes_encode_options(tiny_folder):
    model = fastbert.from_pretrained(tiny_folder, device="cpu", dtype=torch.float32, backend="torch")
    with model.start_pool(["cpu", "cpu"], chunk_size=2) as pool:
        for options in ({}, dict(convert_to_tensor=True), dict(convert_to_numpy=False), dict(precision="ubinary"),
                        dict(output_value="token_embeddings"), dict(output_value=None, prompt="query: "),
                        dict(normalize_embeddings=True, truncate_dim=8)):
            for texts in (TEXTS, TEXTS[0], []):
                ours, over_workers = model.encode(texts, **options), pool.encode(texts, **options)
                assert describe(over_workers) == describe(ours), options
        # int8 ranges span the whole call, not each worker's chunk: the single-device result.
        assert_quantized_close(pool.encode(TEXTS, precision="int8"), model.encode(TEXTS, precision="int8"),
                               pool.encode(TEXTS), model.encode(TEXTS), "int8")
        assert_close(model.encode(TEXTS, device=["cpu"]), model.encode(TEXTS))
        with pytest.raises(ValueError, match="device= does not apply to a pool"):
            pool.encode(TEXTS, device="cpu")
        with pytest.raises(ValueError, match="ranges would come from each chunk"):
            pool.encode_chunks([TEXTS], precision="uint8")
