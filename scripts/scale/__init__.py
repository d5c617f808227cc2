"""The tools for data at ImageNet scale."""
