"""Distil inside other training frameworks with a compiled spec.

- :mod:`kdspec.integrations.hf`: a Hugging Face ``transformers.Trainer`` subclass;
- :mod:`kdspec.integrations.lightning`: a Lightning ``LightningModule``.

Both drive the same :class:`~kdspec.compiler.Distiller` the ``kdspec train`` loop drives, with the
same stage plan (:func:`kdspec.runtime.trainer.plan_stages`), so a method behaves alike
everywhere. Each is an optional extra (``kdspec[hf]``, ``kdspec[lightning]``).
"""

from kdspec.integrations.stages import StageClock, all_trainable_parameters

__all__ = ["StageClock", "all_trainable_parameters"]
