"""Pretraining: corpora, tokenizer, objectives, the staged loop with growth, checkpoints."""
