"""Training: the recipes, their registry of rows, and the fit loops and cross-validation runner."""
