"""Droq registry service: which executor node handles component class X, and where it runs."""

__version__ = "1.0.0"
