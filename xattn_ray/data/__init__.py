"""Data: parallel corpora, the synthetic language family, bilingual dictionaries, downloads."""
