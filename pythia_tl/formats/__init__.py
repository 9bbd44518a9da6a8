"""File formats read and written byte by byte: the safetensors header and PyTorch's ``.bin``."""
