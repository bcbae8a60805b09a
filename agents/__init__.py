"""Policies, baselines, learners (PPO, TRPO), DRS and the MAML family."""
