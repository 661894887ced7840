"""Persistent Visual Memory (PVM) for Qwen3-VL on Hugging Face Transformers."""

__version__ = "0.1.0"
