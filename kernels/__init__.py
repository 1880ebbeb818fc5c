"""Triton kernels for scoring, installed as `actstore.kernels` (never as a top-level `kernels` package:
that name belongs to Hugging Face's `kernels` distribution, which transformers imports when present).

One fused op per file, each with its fp32 torch reference beside it; the scorer picks kernel or
reference through one switch. The fused JumpReLU-encode + probe-projection kernel comes with the
kernel issue.
"""
