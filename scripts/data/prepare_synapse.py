"""Prepare Synapse data as NIfTI volumes + a decathlon datalist.

Usage:
    python scripts/data/prepare_synapse.py btcv --src RawData/Training --dst data/synapse
    python scripts/data/prepare_synapse.py transunet --src project_TransUNet/data/Synapse --dst data/synapse
"""

from bundle.data.synapse import prepare_btcv
from bundle.data.transunet import import_transunet
from bundle.errors import run_script


def btcv(src: str, dst: str = "data/synapse", validation_from_test: bool = True) -> None:
    """Raw BTCV (img/, label/; 13 labels) → 8 organs, TransUNet split; prints the datalist path."""
    print(prepare_btcv(src, dst, validation_from_test=validation_from_test))


def transunet(src: str, dst: str = "data/synapse", validation_from_test: bool = True) -> None:
    """TransUNet's train_npz/ + test_vol_h5/ → NIfTI volumes; prints the datalist path."""
    print(import_transunet(src, dst, validation_from_test=validation_from_test))


if __name__ == "__main__":
    run_script({"btcv": btcv, "transunet": transunet})
