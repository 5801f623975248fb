"""Researcher tools for every method: leaderboard (protocol tables from the dataset registry), t-SNE pictures of any
model's feature modes, CMC and loss-term plots, ONNX export of any model's test feature."""
