"""Fine-tuning tasks of the Ko-bert2BERT study: KLUE-NLI, KorQuAD 1.0 extractive and generative QA,
news summarization; their data, heads and scores.

    from surgery.finetune import finetune, TASKS
    scores = finetune("runs/T/final", "klue-nli", "runs/T/ft/klue-nli", epochs=3, limit=1000)

Heavy imports (torch, transformers) happen inside `finetune`, so importing this package is cheap.
"""

from surgery.finetune.params import FinetuneParams
from surgery.finetune.run import finetune
from surgery.finetune.tasks import TASKS

__all__ = ["finetune", "TASKS", "FinetuneParams"]
