"""What pythia-tl writes: atomic files, the streaming safetensors writer, the metadata schema."""
