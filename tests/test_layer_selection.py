"""Which source layer each new position starts from."""

import pytest

from surgery.errors import SurgeryError
from surgery.ops import grow_model
from surgery.ops.depth import select_layers
from tests.tiny import model, spec


def test_strategies_8_to_12():
    assert select_layers(8, 16) == list(range(8)) * 2  # progressive stacking
    assert select_layers(8, 12) == list(range(8)) + [0, 1, 2, 3]
    assert select_layers(8, 12, "top") == list(range(8)) + [4, 5, 6, 7]
    assert select_layers(8, 12, "interleave") == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7]
    assert select_layers(2, 5, "top") == [0, 1, 1, 0, 1]


def test_explicit_layers_per_stack_and_relative_bias_stays_in_block_0():
    src = spec("t5")
    g = grow_model(model(src), src, src.model_copy(update=dict(layers=3, decoder_layers=4)), "d",
                   options={"layers": [[1, 0, 1], [0, 1, 1, 0]]})
    assert g.plan.layers == {"enc": [1, 0, 1], "dec": [0, 1, 1, 0]}
    names = set(g.model.state_dict())
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in names
    assert not any("block.1.layer.0.SelfAttention.relative_attention_bias" in n or
                   "block.2.layer.0.SelfAttention.relative_attention_bias" in n for n in names)


@pytest.mark.parametrize("options,message", [
    ({"layers": [[0, 1, 2]]}, "names layer 2"),
    ({"layers": [[0, 1]]}, "has 2 entries"),
    ({"layers": [[1, 0, 0]], "depth": "identity"}, "in order"),
    ({"select": "random"}, "unknown layer selection"),
    ({"depth": "zero"}, "unknown depth mode"),
])
def test_bad_layer_options(options, message):
    src = spec("bert")
    with pytest.raises(SurgeryError, match=message):
        grow_model(model(src), src, src.model_copy(update=dict(layers=3)), "d", options=options)
