"""Sampling: the clip loop and guidance, schedulers, clip planning, seeds, colour matching, working memory."""
