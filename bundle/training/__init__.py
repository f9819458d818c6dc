"""Training helpers attached by the training configs (:mod:`bundle.training.progress`: the progress plot).

Nothing is imported here, so ``import bundle.training`` stays cheap; import the submodules themselves.
"""
