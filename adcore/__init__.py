"""adcore: self-supervised visual anomaly detection for part photos (no Streamlit here)."""

__version__ = "0.1.0"
