"""The patched forward path emits no warnings of fastbert's making: neither Python warnings nor the log
records transformers prints (its deprecation notices are logged once per process, not warned)."""

import logging
import warnings

import pytest
import torch

import fastbert
from tests.bert_factory import random_batch, random_bert

transformers = pytest.importorskip("transformers")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def assert_silent(call):
    """Run `call` with warnings as errors and every transformers log record at WARNING or above collected:
    none may appear. transformers logs each warning_once message once per process: the cache is emptied so
    that a message an earlier test triggered shows again."""
    logging.Logger.warning_once.cache_clear()
    handler, logger = _Records(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call()
    finally:
        logger.removeHandler(handler)
    assert handler.records == []


@pytest.mark.parametrize("model_class", ["BertModel", "BertForSequenceClassification"])
@pytest.mark.parametrize("return_dict", [None, False])
def test_patched_transformers_forward_is_silent(tmp_path, model_class, return_dict):
    model = random_bert(tmp_path, model_class=model_class)
    ids, mask, types = random_batch(model.config.vocab_size, [3, 7], seq_len=7)
    fastbert.optimize(model)
    with torch.no_grad():
        assert_silent(lambda: model(input_ids=ids, attention_mask=mask, token_type_ids=types, return_dict=return_dict))
        assert_silent(lambda: model(ids, mask, output_hidden_states=True))


def test_patched_sentence_transformer_encode_is_silent(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    model = fastbert.optimize(st.SentenceTransformer(str(minilm_path), device="cpu"))
    assert_silent(lambda: model.encode(["a sentence", "another, longer sentence"]))


def test_patched_cross_encoder_predict_is_silent(tmp_path, minilm_path):
    st = pytest.importorskip("sentence_transformers")
    from tests.st_factory import PAIRS, reranker_folder

    model = fastbert.optimize(st.CrossEncoder(str(reranker_folder(tmp_path, minilm_path, 1)), device="cpu",
                                              max_length=64))
    assert_silent(lambda: model.predict(PAIRS))
