"""The leaderboard: result files to its tables, page and figures."""
