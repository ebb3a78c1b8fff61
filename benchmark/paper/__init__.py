"""The paper tier's datasets and its cost estimate."""
