"""ASSFTLib: adapt a medical vision foundation model to a site's segmentation task
with few expert labels (Active Selective Semi-supervised Fine-tuning).

Nothing in this package imports Qt; only :mod:`ASSFTLib.mrml` imports ``slicer``.
"""
__version__ = "0.1.0"
