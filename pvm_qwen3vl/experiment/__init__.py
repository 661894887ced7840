"""The miniature replication of PVM's central claim (`pvm-qwen3vl experiment`; the quickstart is its short version).

* ``task``: the stress task: colour probes late in a long monologue, scored by depth in the output.
* ``arms``: the paper's arms (base, control, PVM, iso-parameter MLP, hidden-states memory, PVM + GRPO).
* ``train``: the SFT and GRPO loops every arm shares.
* ``measure``: accuracy at every probe; attention mass and PVM's injection norm against depth.
* ``stats``: bootstrap confidence intervals over seeds and items. ``plots``: the figures. ``report``: results.json,
  results.md.
* ``run``: the jobs, the worker processes and the `experiment` command. ``pretrained``: the shipped pretrained base.

Recipes live in ``recipes/`` (YAML).
"""
