"""Quantizer role (edge): encode the staged raw KV per plan, upload it, enqueue the decode (DESIGN.md, step 4)."""
