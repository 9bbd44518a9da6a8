"""A raw pythia-tl file as a transformers ``GPTNeoXForCausalLM`` in memory, no folder written.

The same model ``export`` writes to disk: ``config.json``'s fields (with the provenance field of
ours) and every source tensor rebuilt by running the table backwards (``RebuiltSource``), copied
into the model one at a time. TransformerLens 4's ``TransformerBridge.boot_transformers(name,
hf_model=...)`` boots it (``pythia_tl.load``'s bridge backend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pythia_tl.errors import OutputFileError
from pythia_tl.output.metadata import ConversionRecord, OutputFile

if TYPE_CHECKING:
    import torch

# transformers 5.14 and later name the output head lm_head; the table's source name is embed_out.
_HEAD_NAMES = {"embed_out.weight": "lm_head.weight"}


def check_rebuildable(info: OutputFile, record: ConversionRecord) -> None:
    """OutputFileError unless the file is raw and whole, as GPT-NeoX's tensors need."""
    if not record.selection.is_all:
        raise OutputFileError(
            f"{info.path}: a partial file (it holds only some tensors); a GPT-NeoX model needs "
            "every weight: use a whole conversion"
        )
    passes = record.processing.passes
    if passes:
        raise OutputFileError(
            f"{info.path}: processed ({', '.join(passes)}); GPT-NeoX cannot hold processed "
            "weights (a folded final LayerNorm leaves an unembedding bias, and folded block "
            "LayerNorms leave none to hold their weights): use a raw conversion"
        )


def gpt_neox_model(info: OutputFile, record: ConversionRecord, dtype: torch.dtype) -> Any:
    """A ``GPTNeoXForCausalLM`` (eval mode, on the CPU, in ``dtype``) holding the file's weights."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.initialization import no_init_weights

    from pythia_tl.dtypes import by_torch
    from pythia_tl.export.hf_folder import neox_config_json, provenance_field
    from pythia_tl.export.rebuild import RebuiltSource

    check_rebuildable(info, record)
    fields = {
        **neox_config_json(record.config, by_torch()[dtype].name),
        **provenance_field(info, record),
    }
    fields.pop("architectures")
    fields.pop("model_type")
    config = GPTNeoXConfig(**fields)
    config.architectures = ["GPTNeoXForCausalLM"]
    with no_init_weights():
        model = GPTNeoXForCausalLM(config)
    for parameter in model.parameters():  # the rotary tables stay float32, as from_pretrained's
        parameter.data = parameter.data.to(dtype)
    targets = model.state_dict()
    with torch.no_grad():
        for name, tensor in RebuiltSource(info, record).tensors():
            key = name if name in targets else _HEAD_NAMES.get(name, name)
            if key not in targets or tuple(targets[key].shape) != tuple(tensor.shape):
                raise OutputFileError(
                    f"{info.path}: transformers' GPTNeoXForCausalLM has no weight {name} of shape "
                    f"{list(tensor.shape)}"
                )
            targets[key].copy_(tensor)
    model.eval()
    return model
