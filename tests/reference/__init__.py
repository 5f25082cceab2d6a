"""Tests of sagegen.reference (CPU; test_ref_cuda.py needs a GPU)."""
