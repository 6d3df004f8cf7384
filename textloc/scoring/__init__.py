"""Scoring what a model wrote: the OCR, word-level and image metrics, quoted text and prompt pairs."""
