"""Running methods: run files, role models, the training loop, the teacher cache.

The layers, bottom up: :mod:`.runfile` (TOML settings, KD501), :mod:`.models` (model sources
and checkpoints, KD404-KD406), :mod:`.data` (splits and seeded loaders, KD502),
:mod:`.trainer` (the loop, KD503), :mod:`.cache` (pre-trained teachers) and :mod:`.job`
(all of it for one spec and one run).
"""

from typing import Any

from kdspec.runtime.runfile import Run, RunConfig, default_run, load_run, parse_run

__all__ = [
    "Run",
    "RunConfig",
    "default_run",
    "load_models",
    "load_run",
    "load_weights",
    "parse_run",
]


def load_models(*args: Any, **kwargs: Any) -> Any:
    """The roles' models as ``kdspec train`` prepares them (see :func:`.job.load_models`)."""
    from kdspec.runtime.job import load_models as load

    return load(*args, **kwargs)


def load_weights(model: Any, path: Any, role: str = "model") -> None:
    """Load a checkpoint (a ``[weights]`` file) into ``model``, as ``kdspec train`` does.

    Strict (every key, every shape), ``weights_only`` loading, ``module.`` prefixes removed,
    a state dict or one under ``model``/``state_dict``; KD405 diagnostics otherwise.
    """
    from kdspec.runtime.models import load_weights as load

    load(model, role, path, default_run())
