"""Writing a converted file back as a Hugging Face GPT-NeoX folder (``pythia-tl export``)."""

from pythia_tl.export.hf_folder import ExportResult, export_hf_folder

__all__ = ["ExportResult", "export_hf_folder"]
