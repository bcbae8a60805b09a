"""Theory studies outside the RL harness: small supervised experiments that check what the
theory of meta-learning predicts (Gao & Sener 2020 section 4 / Figure 3 in :mod:`studies.linreg`;
Fallah et al. and Ji, Yang & Liang's MAML variants in :mod:`studies.maml_variants`).

They use the harness's seeding and the agents' meta-gradient functions; nothing in ``rlbench``,
``agents`` or ``envs`` imports them except the ``rlbench linreg`` / ``rlbench maml-variants``
commands, which run them.
"""
