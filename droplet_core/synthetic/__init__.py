"""Synthetic scenes with known truth: the demo image, test and benchmark scenes, detector training data."""
