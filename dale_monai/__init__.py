"""dale-monai: DALE (data-driven alternating learning) for medical image segmentation with MONAI."""

from . import bundle

__version__ = "0.1.0"

__all__ = ["bundle", "__version__"]
