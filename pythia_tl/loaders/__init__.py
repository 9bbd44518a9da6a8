"""What ``pythia_tl.load`` opens and how: the thing named (``target``), the checkpoint fields it
records (``fields``), and TransformerLens 4's ``TransformerBridge`` (``bridge``). The
``HookedTransformer`` of TransformerLens 3 is built in ``pythia_tl.loading``."""
