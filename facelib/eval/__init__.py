"""Evaluation: error metrics (photometric, geometric, NoW-style), export of meshes and images, method comparison.

:mod:`.metrics`, :mod:`.export`, :mod:`.compare`.
"""
