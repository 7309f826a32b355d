"""Reconstruction methods: two-step (ePIE + per-pixel fit) and joint (autodiff)."""
