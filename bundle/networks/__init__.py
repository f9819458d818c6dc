"""Networks: MSA²Net (BMVC 2024) and SA2-Net (BMVC 2023). Imports torch and timm only."""

from .msa2net import VARIANTS, MSA2Net, MSA2NetConfig

__all__ = ["MSA2Net", "MSA2NetConfig", "VARIANTS"]
