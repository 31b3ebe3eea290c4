"""hm_recs: multimodal fashion recommendation on the H&M data.

The package has two layers:

* a pure core (``hm_recs.data``, ``hm_recs.synth``, ``hm_recs.sessions``, ``hm_recs.evaluation``,
  ``hm_recs.baselines``, ``hm_recs.compute``) that never imports Dagster and is unit-tested directly;
* a thin Dagster layer (``hm_recs.defs``) that wires the core to storage, compute and tracking.
"""

__version__ = "0.1.0"
