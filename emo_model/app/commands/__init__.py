"""Implementations of ``python -m emo_model`` commands (see :mod:`emo_model.app.cli`)."""
