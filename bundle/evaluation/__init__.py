"""Evaluation outside the engines: scoring a folder of finished masks (:mod:`bundle.evaluation.folder`).

Nothing is imported here, so ``import bundle.evaluation`` stays cheap; import the submodules themselves.
"""
