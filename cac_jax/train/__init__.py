"""Training: supervised source training and adversarial (WGAN) adaptation.

Public API:
  train_source(config, workdir, data=None, resume=False, mesh=None) -> SourceState
  adapt(config, workdir, source_params, data=None, resume=False, mesh=None) -> AdaptState
  make_source_step / make_critic_steps / make_generator_step: pure steps for tests/benchmarks.
"""

from cac_jax.train.adversarial import make_critic_steps, make_generator_step
from cac_jax.train.data import Streams, as_stream
from cac_jax.train.loop import adapt, train_source
from cac_jax.train.source import make_source_step
from cac_jax.train.state import AdaptState, SourceState, init_adapt_state, init_source_state
