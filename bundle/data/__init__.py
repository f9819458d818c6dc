"""Dataset preparation, one source a module: raw BTCV/Synapse (``synapse``, which also defines the organs, the CT
window and the test split once), TransUNet's preprocessed release (``transunet``), ISIC2018 (``isic``), MoNuSeg/GlaS
(``microscopy``), the real-data demos (``demos``), synthetic data for checks (``synthetic``) and hash-checked
downloads from package registries (``fetch``)."""
