"""Networks: MSA²Net (BMVC 2024) and SA2-Net (BMVC 2023). Imports torch and timm only."""

from bundle.networks.msa2net import VARIANTS, MSA2Net, MSA2NetConfig
from bundle.networks.sa2net import SA2Net

__all__ = ["MSA2Net", "MSA2NetConfig", "SA2Net", "VARIANTS"]
