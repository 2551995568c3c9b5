"""The translation engine: tensors and files in, tensors and files out; it never sees an experiment file.

Attention and structured dropout, the Transformer, SentencePiece tokenizers, batching, the training
loop, beam search, scoring, checkpoints, freeze policies, parent-to-child transfer, lexicon induction.
"""
