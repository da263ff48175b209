"""The Ko-bert2BERT reproduction (seeds/000): driver, headline numbers, results."""
