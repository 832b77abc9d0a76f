"""Converters from public datasets (as distributed) to MONAI datalists, label-noise injection and
a synthetic default dataset.

This package never imports :mod:`dale_monai`: preparing data must not depend on the training code.
"""

__all__ = ["io", "datalist", "convert", "converters", "synthetic", "noise", "check"]
