"""Evaluation and simulation: experiments, reports, claims, figures, operating-point tables and the policy
simulation suite. Imports the library (`scout`) only; nothing below imports it."""
