"""Researcher tools: leaderboard, t-SNE pictures, CMC/loss plots, ONNX export."""
