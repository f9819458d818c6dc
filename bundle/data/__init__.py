"""Datalist builders per source: raw BTCV/Synapse, TransUNet's preprocessed release, the real-CT demo."""

from .synapse import BTCV_TO_SYNAPSE, ORGANS, TRANSUNET_TEST_CASES, write_datalist

__all__ = ["BTCV_TO_SYNAPSE", "ORGANS", "TRANSUNET_TEST_CASES", "write_datalist"]
