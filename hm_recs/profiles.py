"""Run profiles: the ``evaluate`` job's model settings for a kind of machine, in one place.

The assets' own defaults are the paper's settings (``paper``: facebook/bart-base-sized training,
the VQGAN's 1,000 steps, ...), meant for GPUs. On a CPU:

* ``demo`` -- what ``make demo`` runs: every stage, small models, the whole pipeline in under
  10 minutes on 2 cores; two BART variants (``semantic_id`` and its text-only twin) trained on the
  last three weeks' purchases, one model per variant for both weeks, judged on every event.
* ``cpu`` -- the from-scratch BART of ``benchmarks/bench_bart.py``: every variant at most about
  10 minutes of training on 2 cores, judged on every event.
* ``smoke`` -- the least training that still runs every asset and check (the tests' wiring runs).

``auto`` (the default of ``HM_PROFILE``) is ``paper`` where torch sees a GPU and ``demo`` elsewhere:
the schedule, the sensors and the ``evaluate`` job's launchpad default take the configured profile,
so an automatic weekly run on a CPU machine finishes in demo time (``hm_recs.defs.resources``).

:func:`run_config` returns the run config (``ops`` and ``resources``) for a profile,
:func:`selected_assets` the evaluate job's assets it trains, :func:`executor_config` how many
torch steps may run at once.
"""

from __future__ import annotations

import copy

# hm_recs.models.bart.VARIANTS, named here so that reading a profile does not import torch
# (a test keeps them equal)
VARIANTS = ("text_small", "text_large", "image_full", "image_compact", "semantic_id", "semantic_id_text")

# the evaluate job's chains that benchmarks and tests run alone (a run may select part of a job)
INGEST_CHAIN = [
    *(
        f"{stage}_{table}"
        for stage in ("raw", "clean")
        for table in ("articles", "customers", "transactions")
    ),
    "image_manifest",
    "article_features",
    "customer_features",
]
POP_CHAIN = ["time_split", "popularity_baselines", "evaluation_events", "popularity_evaluation"]
GRU4REC_CHAIN = [*POP_CHAIN, "gru4rec_model", "gru4rec_evaluation"]
RANKER_CHAIN = ["candidates", "ranker_training_data", "ranker_model", "ranker_evaluation"]
SERVING_CHAIN = ["model_comparison", "champion", "recommendations"]

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# BART from scratch on a CPU (chosen on the validation week of the small data; issue 10's notes list the
# runs, benchmarks/RESULTS.md the result): one pass over the
# training pairs week by week, the newest last, with a cosine decay and no warm-up (at a tiny rate the
# decoder settles on the unconditional article distribution first and takes long to start reading the
# source); then the newest week four more times at half the rate; the test-week model is the
# validation model plus that pass over the validation week (a weekly refit in seconds)
_BART_CPU = {
    "learning_rate": 2e-3,
    "epochs": 1.0,
    "batch_size": 64,
    "accumulate": 1,
    "warmup_ratio": 0.0,
    "schedule": "cosine",
    "order": "time",
    "dropout": 0.0,
    "recent_weeks": 1,
    "recent_epochs": 4.0,
    "recent_learning_rate_scale": 0.5,
    "refit_for_test": True,
    "refit_mode": "continue",
    "checkpoint_every": 500,
}
# text variants first learn to read their source (a reconstruction pass, standing in for BART's
# pretraining); without it their decoder writes one list for every history
_TEXT_CPU = {**_BART_CPU, "reconstruction_epochs": 0.5}
# CPU source budgets: text_small 5 articles; text_large ~12; image_full 3 articles with 64 codes each
# (the small VQGAN); image_compact ~8 with 4 codes; semantic IDs 10 articles of 4 tokens
CPU_SOURCE_TOKENS = {
    "text_small": 80,
    "text_large": 192,
    "image_full": 240,
    "image_compact": 160,
    "semantic_id": 42,
    "semantic_id_text": 42,
}
# weeks of targets per variant that keep training near 10 minutes on 2 cores (None: every pair)
CPU_TARGET_WEEKS = {
    "text_small": 12,
    "text_large": 6,
    "image_full": 4,
    "image_compact": 6,
    "semantic_id": None,
    "semantic_id_text": None,
}
# the demo's two: the semantic IDs and their text-only twin (a text variant needs about 8 minutes of
# training to start reading its source, more than the demo's budget: benchmarks/bench_bart.py has them)
DEMO_VARIANTS = ["semantic_id", "semantic_id_text"]
DEMO_TARGET_WEEKS = {"semantic_id": 3, "semantic_id_text": 3}


def _bart_cpu(variant: str, weeks: dict, refit: bool = True, serving_epochs: float | None = None) -> dict:
    base = _BART_CPU if variant.startswith("semantic_id") else _TEXT_CPU
    return {
        "config": {
            **base,
            "target_weeks": weeks.get(variant),
            "refit_for_test": refit,
            "serving_epochs": serving_epochs,
        }
    }


_GRU4REC = {"gru4rec_model": {"config": {"preset": "demo"}}}

PROFILES: dict[str, dict] = {
    "paper": {"ops": {}, "resources": {}},
    "cpu": {
        "ops": {
            **_GRU4REC,
            "vqgan_finetuned_model": {
                "config": {
                    "max_steps": 300,
                    "batch_size": 8,
                    "base_learning_rate": 1e-4,
                    "checkpoint_every": 100,
                }
            },
            "vqgan_evaluation": {"config": {"max_images": 200, "psnr_floor": 12.0}},
            **{f"bart_model_{v}": _bart_cpu(v, CPU_TARGET_WEEKS) for v in VARIANTS},
        },
        "resources": {"bart": {"config": {"size": "tiny", "source_tokens": CPU_SOURCE_TOKENS}}},
    },
    "demo": {
        "ops": {
            **_GRU4REC,
            "vqgan_finetuned_model": {
                "config": {
                    "max_steps": 120,
                    "batch_size": 8,
                    "base_learning_rate": 1e-4,
                    "checkpoint_every": 60,
                }
            },
            # 120 CPU steps from random weights, the discriminator on over the second half, reach about
            # 12 dB (13.4 without the GAN term); the default floor (18 dB) is for real training
            "vqgan_evaluation": {"config": {"max_images": 200, "psnr_floor": 11.0}},
            # the demo trains one model per variant (the validation week's), and it serves both weeks;
            # the served model is it plus one pass over the two weeks it has not seen
            **{
                f"bart_model_{v}": _bart_cpu(v, DEMO_TARGET_WEEKS, refit=False, serving_epochs=1.0)
                for v in DEMO_VARIANTS
            },
            "bart_evaluation": {"config": {"diagnostic_events": 200}},
        },
        "resources": {
            "bart": {
                "config": {"size": "tiny", "source_tokens": CPU_SOURCE_TOKENS, "variants": DEMO_VARIANTS}
            }
        },
    },
    "smoke": {
        "ops": {
            **_GRU4REC,
            "vqgan_finetuned_model": {
                "config": {
                    "max_steps": 16,
                    "batch_size": 4,
                    "base_learning_rate": 1e-4,
                    "checkpoint_every": 8,
                    "max_images": 200,
                }
            },
            "vqgan_evaluation": {"config": {"max_images": 64, "psnr_floor": 8.0}},
            "image_tokens": {"config": {"min_codes_used": 2}},
            # a dozen steps teach nothing: the distinct-generations floor is off here (its measure is
            # tested in test_bart)
            **{
                f"bart_model_{v}": {
                    "config": {
                        "max_steps": 12,
                        "batch_size": 16,
                        "accumulate": 1,
                        "learning_rate": 2e-3,
                        "refit_for_test": False,
                        "checkpoint_every": 6,
                        "min_distinct_share": 0.0,
                        # one text variant compares the two groundings (as the evaluation once did for
                        # all); the others take constrained decoding, which keeps the suite's time
                        "comparison_events": 16,
                        **({} if v == "text_large" else {"grounding": "constrained"}),
                    }
                }
                for v in VARIANTS
            },
            "bart_evaluation": {"config": {"diagnostic_events": 16}},
            # tiny data: two training weeks, a small forest, floors for a few hundred buyers a week
            # BART's top 12 as a source too (its fit before the first training week included)
            "candidates": {
                "config": {
                    "train_weeks": 2,
                    "min_recall": 0.05,
                    "bart_source": "semantic_id",
                    "bart_depth": 12,
                    "bart_beams": 12,
                }
            },
            "ranker_model": {"config": {"n_estimators": 40, "min_distinct_share": 0.1}},
        },
        "resources": {
            "bart": {
                "config": {
                    "size": "tiny",
                    "source_tokens": {v: 64 for v in VARIANTS} | {"image_full": 160},
                    "beams": 12,
                }
            }
        },
    },
}


def run_config(profile: str, bart_variants: list[str] | None = None) -> dict:
    """The evaluate job's run config for ``profile`` (console logging at WARNING), optionally for a
    subset of the BART variants."""
    if profile not in PROFILES:
        raise ValueError(f"unknown run profile {profile!r}: one of {sorted(PROFILES)}")
    cfg = copy.deepcopy(PROFILES[profile])
    if bart_variants is not None:
        unknown = [v for v in bart_variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown BART variants {unknown}: choose from {sorted(VARIANTS)}")
        cfg["ops"] = {
            k: v
            for k, v in cfg["ops"].items()
            if not k.startswith("bart_model_") or k.removeprefix("bart_model_") in bart_variants
        }
        bart = cfg["resources"].setdefault("bart", {"config": {}})["config"]
        bart["variants"] = list(bart_variants)
    return {**QUIET, **cfg}


AUTO = "auto"
# the op tag of the steps that train or run torch models; on a CPU machine one at a time, or two
# steps each spreading over every core run at half speed (and the daemon's evaluate took 3x the demo)
TORCH_TAG = "hm_recs/compute"
TORCH_STEP = {TORCH_TAG: "torch"}


def resolve_profile(name: str, gpu: bool) -> str:
    """``auto`` -> ``paper`` on a GPU machine, ``demo`` on a CPU one; a named profile as it is."""
    name = (name or AUTO).strip().lower()
    if name == AUTO:
        return "paper" if gpu else "demo"
    if name not in PROFILES:
        raise ValueError(f"HM_PROFILE={name!r} is not a run profile: one of {[AUTO, *sorted(PROFILES)]}")
    return name


def bart_variants(config: dict) -> list[str] | None:
    """The BART variants a run config trains (``resources.bart.config.variants``; None: all)."""
    return config.get("resources", {}).get("bart", {}).get("config", {}).get("variants")


def selected_assets(config: dict, asset_keys: list[str]) -> list[str] | None:
    """The evaluate job's assets a run config trains: every asset but the BART models of variants
    outside ``resources.bart.config.variants``; None when that is all of them."""
    variants = bart_variants(config)
    if variants is None:
        return None
    kept = [
        k for k in asset_keys if not k.startswith("bart_model_") or k.removeprefix("bart_model_") in variants
    ]
    return kept if len(kept) < len(asset_keys) else None


def narrowed(config: dict, assets: list[str] | None) -> dict:
    """``config`` with op settings only for ``assets`` (a run config may name only selected ops)."""
    if assets is None:
        return config
    return {**config, "ops": {k: v for k, v in config.get("ops", {}).items() if k in assets}}


# how a profile's runs execute their steps: on a GPU machine a process per step (torch steps limited
# by the tag below, the others alongside); on a CPU one every step in the run's own process, one after
# another, as `make demo` runs them -- under the daemon a process per step cost 8-10 s of imports each
# (26 steps: an automatic evaluate took 11.2 minutes against 6.9 in process, benchmarks/RESULTS.md)
IN_PROCESS = {"paper": False, "cpu": True, "demo": True, "smoke": True}


def executor_config(profile: str) -> dict | None:
    """The multiprocess executor's settings (one torch step at a time), or None where the profile
    runs its steps in process."""
    if IN_PROCESS.get(profile, True):
        return None
    return {"tag_concurrency_limits": [{"key": TORCH_TAG, "value": "torch", "limit": 1}]}
