"""Dataset readers: one per on-disk layout, yielding test samples with labels and masks for evaluation."""

from .base import ANOMALOUS, NORMAL, Category, Sample, load_mask, resize_mask
from .readers import READERS, DatasetReader, get_reader

__all__ = ["Sample", "Category", "NORMAL", "ANOMALOUS", "load_mask", "resize_mask", "READERS", "DatasetReader",
           "get_reader"]
