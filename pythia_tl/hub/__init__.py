"""The Hugging Face Hub as a source: what a revision lists (``listing``), fetching it into the
cache (``revision``), each weight file's storage location resolved once (``location``), byte
ranges read from that location into tensors' own memory (``transport``, ``remote``,
``stream_reader``), and the Hub's failures in the caller's terms (``errors``).

Nothing is imported here: huggingface_hub is slow to import and a local folder needs none of it.
"""
