"""Selector role (edge): tokenize, prefill with scores, ask the policy, hand off (DESIGN.md, steps 1-2)."""
