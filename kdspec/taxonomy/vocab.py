"""Moved to :mod:`kdspec.vocabulary` (the bottom layer); kept so old imports still work."""

from kdspec.vocabulary.functions import *  # noqa: F403
from kdspec.vocabulary.functions import REQUIRED, by_category  # noqa: F401
