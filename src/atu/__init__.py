"""atu: Align-then-Unlearn and the unlearning baselines, with RWKU-style evaluation."""

__version__ = "0.1.0"
