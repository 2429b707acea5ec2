"""nanoGPT from scratch: the package the course's chapters import.

Each module depends only on torch, numpy, tiktoken, tqdm and its siblings, so any of them
can be copied into a project of your own. What only the course needs (quick mode, the
measured records, notebook helpers) lives apart, in ``nanogpt.course``.
"""
from .data import DataLoaderLite, get_batch, load_text, train_val_split
from .model import GPT, GPTConfig
from .presets import PRESETS
from .runtime import pick_device
from .tokenizer import BPETokenizer, CharTokenizer, GPT2Tokenizer

__all__ = [
    "GPT", "GPTConfig", "PRESETS", "DataLoaderLite", "get_batch", "load_text", "train_val_split",
    "CharTokenizer", "GPT2Tokenizer", "BPETokenizer", "pick_device",
]
__version__ = "0.4.1"  # the install cells pin the tag v<this>; pyproject.toml reads it from here
