"""The Python API beside the command line: the same engine, the library's errors.

``convert`` (one checkpoint into a file), ``checkpoints`` (a model's training checkpoints),
``tensors``/``stacked_tensors`` (some TransformerLens keys across steps, in memory) and
``trace`` (the same, into one resumable file). The package exports them lazily (see
``pythia_tl/__init__.py``): nothing here imports torch until it is called.
"""
