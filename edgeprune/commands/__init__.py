"""One module per CLI verb; see edgeprune/cli.py."""
