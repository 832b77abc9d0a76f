"""dale-monai: DALE (data-driven alternating learning) for medical image segmentation with MONAI."""

__version__ = "0.1.0"
