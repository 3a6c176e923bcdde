"""hiersearch: search over layer-wise guided fine-tuning of BERT encoders for hierarchical
multi-label text classification (Manginas, Chalkidis, Malakasiotis 2020)."""

__version__ = "0.1.0"
