"""Lessons: the course as validated data, checks on live state, progress, play/lint/handout."""
