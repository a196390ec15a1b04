"""Droplet core: probabilistic fitting of droplet microscopy images (no Streamlit here)."""

__version__ = "0.1.0"
