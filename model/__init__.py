"""Models: one plain `nn.Module` per file; `model_interface.MInterface` selects one by file name."""
