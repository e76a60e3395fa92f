"""The named configs: the demo is the paper's config with its own, explicit departures."""

import inspect

from cac_jax import models
from configs import benchmark, demo, paper


def _leaves(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_leaves(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def test_demo_sets_every_value_it_changes_from_the_paper_config():
  source = inspect.getsource(demo)
  assert "tiny" not in source.split('"""', 2)[2]  # no import of the test config
  paper_leaves, demo_leaves = (
    _leaves(paper.get_config().to_dict()),
    _leaves(demo.get_config().to_dict()),
  )
  assert set(paper_leaves) == set(demo_leaves)
  changed = [k for k in paper_leaves if paper_leaves[k] != demo_leaves[k]]
  assert changed and all(f"c.{k} =" in source for k in changed), changed


def test_demo_and_benchmark_networks_see_at_least_67_px():
  for cfg in (demo.get_config(), benchmark.get_config()):
    assert models.receptive_field(cfg.model.dilations) >= 67
  assert models.receptive_field(paper.get_config().model.dilations) == 131
