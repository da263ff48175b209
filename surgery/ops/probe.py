"""How far a growth moved the function: max relative logit change on a fixed random token batch.

relative change = max |grown - source| / max |source| over the batch's logits (T5: decoder logits
with decoder_input_ids; BERT MLM: MLM logits; bare BertModel: the first d_model units of the last
hidden state, which for every width op are the source's own units).
"""

from __future__ import annotations

import torch


def probe_batch(vocab: int, seed: int = 0, batch: int = 2, length: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, max(vocab, 3), (batch, length), generator=g)


def outputs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids[:, : max(1, ids.shape[1] // 2)]).logits
        out = model(input_ids=ids)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def relative_change(small, grown, vocab: int, seed: int = 0) -> float:
    small, grown = small.eval(), grown.eval()
    ids = probe_batch(vocab, seed)
    a, b = outputs(small, ids).float(), outputs(grown, ids).float()
    b = b[..., : a.shape[-1]]
    return ((b - a).abs().max() / a.abs().max().clamp_min(1e-30)).item()
