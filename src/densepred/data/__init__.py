"""Datasets: synthetic scene generator, NYUD-v2 and Taskonomy readers, prepare step, transforms."""
