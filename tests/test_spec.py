"""ModelSpec: planning-time parameter counts equal what transformers builds."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    T5Config,
    T5ForConditionalGeneration,
)

from surgery.spec import ModelSpec

SPECS = [
    ModelSpec(family="t5", layers=2, decoder_layers=3, d_model=32, heads=4, d_ff=64, vocab=100),
    ModelSpec(family="t5", layers=1, decoder_layers=2, d_model=32, heads=4, d_ff=48, d_kv=16, vocab=90, ff="gated-gelu"),
    ModelSpec(family="t5", layers=1, decoder_layers=1, d_model=24, heads=2, d_ff=40, vocab=64, head="tied-unscaled"),
    ModelSpec(family="bert", layers=2, d_model=32, heads=4, d_ff=64, vocab=100, max_positions=64),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_param_count_matches_transformers(spec):
    cfg_cls, model_cls = (T5Config, T5ForConditionalGeneration) if spec.family == "t5" else (BertConfig, BertForMaskedLM)
    assert spec.hf_config_class == cfg_cls.__name__ and spec.hf_model_class == model_cls.__name__
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**spec.hf_config()))
    assert model.num_parameters() == spec.params


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_round_trip_through_hf_config(spec):
    cfg_cls = T5Config if spec.family == "t5" else BertConfig
    config = cfg_cls(**spec.hf_config()).to_dict()
    assert ModelSpec.from_hf_config(config) == spec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(family="t5", layers=2, d_model=32, heads=4, d_ff=64), r"layers=ENCODER\+DECODER"),
        (dict(family="bert", layers=2, decoder_layers=2, d_model=32, heads=4, d_ff=64), "one stack"),
        (dict(family="bert", layers=2, d_model=30, heads=4, d_ff=64), "does not divide"),
        (dict(family="t5", layers=2, decoder_layers=2, d_model=32, heads=4, d_ff=0), "d_ff must be positive"),
    ],
)
def test_bad_specs_say_why(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**kwargs)
