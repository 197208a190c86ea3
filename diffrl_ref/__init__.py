"""diffrl-ref: executable specification of diffusion models for reinforcement learning."""

__version__ = "0.1.0"
