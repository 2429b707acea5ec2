"""nanoGPT from scratch: the package the course's chapters import.

Each module depends only on torch, numpy, tiktoken, tqdm and its siblings, so any of them
can be copied into a project of your own.
"""
from .data import DataLoaderLite, get_batch, load_text, train_val_split
from .model import GPT, PRESETS, GPTConfig
from .runtime import is_quick, pick_device
from .tokenizer import BPETokenizer, CharTokenizer, GPT2Tokenizer

__all__ = [
    "GPT", "GPTConfig", "PRESETS", "DataLoaderLite", "get_batch", "load_text", "train_val_split",
    "CharTokenizer", "GPT2Tokenizer", "BPETokenizer", "is_quick", "pick_device",
]
__version__ = "0.1.0"
