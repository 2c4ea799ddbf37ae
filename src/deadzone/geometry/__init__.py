"""Geometry: tensors to numbers, pure:
spectral metrics, LAPACK helpers, analysis over sites, cheap scores."""
