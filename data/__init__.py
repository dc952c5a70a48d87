"""Datasets: one plain `Dataset` per file; `data_interface.DInterface` selects one by file name."""
