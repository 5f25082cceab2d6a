"""Kernel templates and the C++ headers they instantiate (installed as package data)."""
