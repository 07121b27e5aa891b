"""Built-in training jobs: datasets, models, named jobs and the train / held-out job distribution.

>>> from allocator.jobs import make_job, names, describe, JobDistribution
>>> job = make_job("mnist1d-cnn1d", seed=0)          # a TrainingJob
>>> names("heldout")                                  # the held-out named jobs
>>> JobDistribution("train").sample(np.random.default_rng(0))

Everything is generated offline (synthetic data, the ``mnist1d`` generator,
scikit-learn's bundled digits) and cached in-process.
"""

from allocator.jobs.distribution import (
    JobDistribution,
    JobRecipe,
    describe,
    make_job,
    measured_regime,
    names,
    recipe,
)

__all__ = [
    "JobDistribution",
    "JobRecipe",
    "describe",
    "make_job",
    "measured_regime",
    "names",
    "recipe",
]
