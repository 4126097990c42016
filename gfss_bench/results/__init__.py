"""The results store (one atomic JSON file per run spec) and leaderboard reports."""
