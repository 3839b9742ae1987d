"""Running methods: run files, role models, the training loop, the teacher cache.

The layers, bottom up: :mod:`.runfile` (TOML settings, KD501), :mod:`.models` (model sources
and checkpoints, KD404-KD406), :mod:`.data` (splits and seeded loaders, KD502),
:mod:`.trainer` (the loop, KD503), :mod:`.cache` (pre-trained teachers) and :mod:`.job`
(all of it for one spec and one run).
"""

from kdspec.runtime.runfile import Run, RunConfig, default_run, load_run, parse_run

__all__ = ["Run", "RunConfig", "default_run", "load_run", "parse_run"]
